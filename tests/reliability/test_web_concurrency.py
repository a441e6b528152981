"""Questions in the web app while an upload is parsed and indexed, in a real browser.

One tab uploads the 619-page robustness PDF; meanwhile four other tabs ask questions about a paper
already in the library. Each of the four must get its answer with a citation chip, without an
error, before the upload is done (questions no longer queue behind uploads), and the upload must
then finish. The generator is the tiny random model of tests/conftest.py, as in the other
browser test (tests/app/test_web_e2e.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FOLIO_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "web-concurrency"
PAPER = "unstructured__multi-column_DPR.pdf"
LARGE = "unstructured__DA-619p.pdf"
QUESTIONS = [
    "Which retriever is trained on question and passage pairs?",
    "What does the dual encoder compute?",
    "How many passages are retrieved?",
    "Which datasets are used for evaluation?",
]

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (make system-deps)"
)


@pytest.fixture(scope="module")
def server(start_folio_server, tiny_settings):
    settings = tiny_settings(max_new_tokens=6, serve={"max_upload_mb": 20, "concurrent_questions": 4})
    return start_folio_server(settings, ARTIFACTS)


def test_four_questions_are_answered_while_an_upload_is_indexed(
    server, browser, papers_dir: Path, robustness_dir: Path
) -> None:
    url, log = server
    uploader = browser.new_page(viewport={"width": 1400, "height": 900})
    uploader.goto(url)
    uploader.get_by_text("The library is empty").wait_for(timeout=60_000)
    progress = uploader.locator("#folio-progress")
    uploader.locator("#folio-upload input[type=file]").set_input_files(str(papers_dir / PAPER))
    progress.get_by_text("Ready:").wait_for(timeout=180_000)

    askers = []
    for question in QUESTIONS:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.locator("#folio-documents").get_by_text(PAPER).wait_for(timeout=60_000)
        page.locator("#folio-question textarea").fill(question)
        askers.append(page)

    uploader.locator("#folio-upload input[type=file]").set_input_files(str(robustness_dir / LARGE))
    progress.get_by_text("Parsing page").wait_for(timeout=120_000)  # the ingest is under way
    for page in askers:
        page.locator("#folio-ask").click()
    for page in askers:
        page.locator('#folio-chat a[href*="#folio-cite-"]').first.wait_for(timeout=120_000)
    state = progress.inner_text()
    uploader.screenshot(path=str(_artifact("uploading.png")), full_page=True)
    assert LARGE in state and "Ready:" not in state, f"the questions waited for the upload: {state!r}"

    for i, page in enumerate(askers):
        page.screenshot(path=str(_artifact(f"answer-{i}.png")))
        text = page.locator("#folio-chat").inner_text()
        assert "locked" not in text and "Traceback" not in text and "failed" not in text.lower()
    progress.get_by_text("Ready:").wait_for(timeout=600_000)
    uploader.locator("#folio-documents").get_by_text(LARGE).wait_for(timeout=60_000)
    assert "Traceback" not in log.read_text()


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name
