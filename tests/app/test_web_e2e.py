"""The web app end to end, in a real browser: Debian's chromium driven by Playwright against
`folio serve` on 127.0.0.1.

A real paper from ../shared/data is uploaded through the page, indexed, asked about; the answer
streams in with a citation chip; clicking the chip shows the page with the cited region drawn;
a broken upload is reported with its reason; a document is deleted.
The generator is the tiny random model of tests/conftest.py (the mechanics, in seconds), with
BM25 retrieval and the real MiniLM text encoder for the sampler and citations.

Screenshots go to `test-artifacts/web/` (git-ignored; FOLIO_TEST_ARTIFACTS to move it).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FOLIO_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "web"
PAPER = "unstructured__multi-column_DPR.pdf"  # 13 pages, text layer, two columns
EMPTY = "pdfplumber__empty.pdf"  # 0 bytes: recorded as failed with its reason
QUESTION = "Which retriever is trained on question and passage pairs?"
HIGHLIGHT = (230, 81, 0)  # pipeline.library.viewer's outline colour


pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (make system-deps installs it)"
)


@pytest.fixture(scope="module")
def server(start_folio_server, tiny_settings):
    """`folio serve` with an empty library; yields (url, log path)."""
    settings = tiny_settings(max_new_tokens=6, serve={"max_upload_mb": 20})
    return start_folio_server(settings, ARTIFACTS)


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _highlight_pixels(page, image_src: str) -> int:
    from PIL import Image

    data = page.request.get(image_src).body()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    step = 2
    near = 0
    for x in range(0, image.width, step):
        for y in range(0, image.height, step):
            r, g, b = image.getpixel((x, y))
            if abs(r - HIGHLIGHT[0]) < 30 and abs(g - HIGHLIGHT[1]) < 40 and b < 60:
                near += 1
    return near


def test_upload_ask_click_citation_and_see_the_highlighted_page(
    server, browser, papers_dir: Path, robustness_dir: Path
) -> None:
    url, log = server
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.get_by_text("The library is empty").wait_for(timeout=60_000)
    _shot(page, "01-empty")

    # Upload a real paper and wait until it is parsed and indexed.
    page.locator("#folio-upload input[type=file]").set_input_files(str(papers_dir / PAPER))
    page.locator("#folio-progress").get_by_text("Ready:").wait_for(timeout=180_000)
    documents = page.locator("#folio-documents")
    documents.get_by_text(PAPER).wait_for(timeout=30_000)
    assert "ready" in documents.inner_text()
    page.locator("#folio-ask-about").get_by_text(PAPER).wait_for()
    _shot(page, "02-indexed")

    # Record every text the answer shows while it streams.
    page.evaluate(
        """() => {
          window.folioSeen = [];
          const chat = document.querySelector('#folio-chat');
          new MutationObserver(() => {
            const bots = chat.querySelectorAll('.message.bot, [data-testid="bot"]');
            const last = bots[bots.length - 1];
            if (last) window.folioSeen.push(last.innerText);
          }).observe(chat, {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.locator("#folio-question textarea").fill(QUESTION)
    page.locator("#folio-ask").click()
    chip = page.locator('#folio-chat a[href*="#folio-cite-"]').first
    chip.wait_for(timeout=180_000)
    label = chip.inner_text()
    assert label.startswith("[p. ") and label.endswith("]")
    cited_page = int(label[len("[p. ") : -1])
    seen = page.evaluate("() => window.folioSeen")
    assert len({s for s in seen if s.strip()}) >= 2, "the answer did not stream"
    assert page.locator("#folio-chat").get_by_text(QUESTION).count() == 1
    _shot(page, "03-answer")

    # Move away from the cited page, then click the chip: the viewer comes back to it.
    info = page.locator("#folio-page-info")
    info.get_by_text(f"page {cited_page} of 13").wait_for(timeout=60_000)
    other = cited_page + 1 if cited_page < 13 else cited_page - 1
    page.locator("#folio-next" if other > cited_page else "#folio-prev").click()
    info.get_by_text(f"page {other} of 13").wait_for(timeout=30_000)
    chip.click()
    info.get_by_text(f"page {cited_page} of 13").wait_for(timeout=30_000)
    assert "Highlighted" in info.inner_text()
    image = page.locator("#folio-page img").first
    image.wait_for(timeout=30_000)
    page.wait_for_function(
        "() => { const i = document.querySelector('#folio-page img'); return i && i.complete && i.naturalWidth > 500; }",
        timeout=30_000,
    )
    assert _highlight_pixels(page, image.get_attribute("src")) > 50, (
        "no highlighted region on the page"
    )
    _shot(page, "04-evidence")

    # The transparency panel shows what each stage kept.
    page.get_by_role("tab", name="Transparency").click()
    page.get_by_text("Retrieve (chunks)").first.wait_for(timeout=30_000)
    assert "First token" in page.locator("body").inner_text()
    _shot(page, "05-transparency")

    # A broken file is reported, with its reason, without stopping anything.
    page.locator("#folio-upload input[type=file]").set_input_files(str(robustness_dir / EMPTY))
    page.locator("#folio-progress").get_by_text("Failed:").wait_for(timeout=120_000)
    documents.get_by_text("failed").wait_for(timeout=30_000)
    _shot(page, "06-failed-upload")

    # Delete the paper (the page asks for confirmation first).
    page.get_by_text("Delete a document").click()
    page.locator("#folio-delete-doc input").click()
    page.get_by_role("option", name=f"{PAPER} (13 p.)").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#folio-delete").click()
    page.locator("#folio-delete-note").get_by_text("Deleted").wait_for(timeout=60_000)
    assert PAPER not in documents.inner_text()
    assert page.locator("#folio-ask-about").get_by_text(PAPER).count() == 0

    body = page.locator("body").inner_text()
    assert "Traceback" not in body
    assert not errors, errors
    page.close()
