"""The web app's rough edges, fixed and checked in a real browser (Debian's chromium driven by
Playwright against `folio serve` on the tiny model): live stage status while a question runs
with Ask disabled until it ends; Transparency tables shown in full with each stage explained;
long file names cut with an ellipsis and a tooltip; "Remove failed uploads"; a cancelled delete
that changes nothing; after a delete, no progress row or page of the document, and its chips
naming the file.

The tests run in order on one page and one library (generated sample PDF, no shared data).
Screenshots go to `test-artifacts/web-edges/` (FOLIO_TEST_ARTIFACTS to move it).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("FOLIO_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "web-edges"
LONG_NAME = "folio-guide-to-asking-questions-of-long-pdfs-second-edition-final-version.pdf"
QUESTION = "How many pages per second does the parser process?"
STATUS = re.compile(r"\(\d+ s\)$")

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (make system-deps installs it)"
)


@pytest.fixture(scope="module")
def server(start_folio_server, tiny_settings):
    settings = tiny_settings(max_new_tokens=6, serve={"max_upload_mb": 20})
    url, _log = start_folio_server(settings, ARTIFACTS)
    return url


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, sample_pdf: Path) -> dict[str, Path]:
    """The sample PDF under a long name, and two uploads that fail (empty, not a PDF inside)."""
    folder = tmp_path_factory.mktemp("uploads")
    long = folder / LONG_NAME
    shutil.copyfile(sample_pdf, long)
    empty = folder / "empty-scan.pdf"
    empty.write_bytes(b"")
    garbage = folder / "garbage.pdf"
    garbage.write_bytes(b"%PDF-1.4 this is not really a PDF")
    return {"long": long, "empty": empty, "garbage": garbage}


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.folio_errors = []
    page.on("pageerror", lambda exc: page.folio_errors.append(str(exc)))
    page.goto(server)
    page.get_by_text("The library is empty").wait_for(timeout=60_000)
    yield page
    body = page.locator("body").inner_text()
    page.close()
    assert "Traceback" not in body
    assert not page.folio_errors, page.folio_errors


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _upload(page, *paths: Path, done: str) -> None:
    page.locator("#folio-upload input[type=file]").set_input_files([str(p) for p in paths])
    page.locator("#folio-progress").get_by_text(done).first.wait_for(timeout=180_000)


def _last_reply(page) -> str:
    return page.locator("#folio-chat .message.bot, #folio-chat [data-testid='bot']").last.inner_text().strip()


def test_long_file_names_are_cut_at_the_end_with_the_full_name_as_tooltip(page, files) -> None:
    _upload(page, files["long"], done="Ready:")
    name = page.locator("#folio-documents .folio-file-name").first
    name.wait_for(timeout=30_000)
    assert name.get_attribute("title") == LONG_NAME
    shape = name.evaluate(
        """e => ({cut: e.scrollWidth > e.clientWidth, ellipsis: getComputedStyle(e).textOverflow,
                  lines: e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight)})"""
    )
    assert shape["cut"] and shape["ellipsis"] == "ellipsis" and shape["lines"] < 1.5, shape
    title = page.locator("#folio-documents .folio-doc-title").first
    assert "Asking Questions" in title.inner_text()
    # The title wraps between words: every line break falls at a space.
    breaks = title.evaluate(
        """e => { const text = e.firstChild, range = document.createRange(), out = [];
                  let top = null;
                  for (let i = 0; i < text.length; i++) {
                    range.setStart(text, i); range.setEnd(text, i + 1);
                    const r = range.getClientRects()[0];
                    if (!r) continue;
                    if (top !== null && r.top > top + 2) out.push(text.data[i - 1]);
                    top = r.top;
                  }
                  return out; }"""
    )
    assert all(c == " " for c in breaks), breaks
    progress_name = page.locator("#folio-progress .folio-file-name").first
    assert progress_name.get_attribute("title") == LONG_NAME


def test_a_question_shows_the_stage_running_and_ask_waits_for_the_answer(page) -> None:
    page.evaluate(
        """() => {
          window.folioSeen = [];
          window.folioAskDisabled = [];
          const ask = () => document.querySelector('#folio-ask');
          new MutationObserver(() => {
            const bots = document.querySelectorAll('#folio-chat .message.bot, #folio-chat [data-testid="bot"]');
            const last = bots[bots.length - 1];
            if (last) window.folioSeen.push(last.innerText.trim());
            if (ask() && ask().disabled) window.folioAskDisabled.push(last ? last.innerText.trim() : '');
          }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )
    page.locator("#folio-question textarea").fill(QUESTION)
    page.locator("#folio-ask").click()
    # While the question runs: a status line with the seconds so far, and Ask disabled.
    page.wait_for_function(
        """() => { const b = document.querySelector('#folio-ask');
                   const bots = document.querySelectorAll('#folio-chat .message.bot, #folio-chat [data-testid="bot"]');
                   const last = bots[bots.length - 1];
                   return b && b.disabled && last && /\\(\\d+ s\\)$/.test(last.innerText.trim()); }""",
        timeout=60_000,
    )
    _shot(page, "01-asking")
    page.locator('#folio-chat a[href*="#folio-cite-"]').first.wait_for(timeout=180_000)
    page.wait_for_function("() => !document.querySelector('#folio-ask').disabled", timeout=30_000)
    seen = page.evaluate("() => window.folioSeen")
    statuses = [s for s in seen if STATUS.search(s)]
    # The stages the answerer announces (a fast one may pass between two updates of the page).
    stages = ("Retrieving from the library…", "Sampling evidence (WuKong)…", "Reading ", "Writing the answer…")
    assert any(s.startswith(stages) for s in statuses), statuses
    assert page.evaluate("() => window.folioAskDisabled.some(t => /\\(\\d+ s\\)$/.test(t))")
    last = page.locator("#folio-chat .message.bot, #folio-chat [data-testid='bot']").last
    assert not STATUS.search(last.inner_text().strip())
    _shot(page, "02-answered")


def test_transparency_tables_are_shown_in_full_and_each_stage_is_explained(page) -> None:
    page.get_by_role("tab", name="Transparency").click()
    tables = page.locator("#folio-transparency")
    generate = tables.get_by_text("Generate (tokens / most allowed)").first
    generate.wait_for(timeout=30_000)
    generate.scroll_into_view_if_needed()
    assert generate.is_visible()
    for explained in ("the WuKong sampler keeps", "what the sampler chooses from", "tokens written of the most allowed"):
        assert tables.get_by_text(explained).count() == 1, explained
    _shot(page, "03-transparency")
    # No box cuts rows or columns: every table is as tall and as wide as its box.
    cut = tables.evaluate(
        """e => [...e.querySelectorAll('table')].map(t => {
                 const box = t.parentElement;
                 return {rows: t.rows.length, tall: box.scrollHeight > box.clientHeight + 1,
                         wide: box.scrollWidth > box.clientWidth + 1, box: box.clientWidth,
                         columns: [...t.rows[t.rows.length - 1].cells].map(c => Math.round(c.getBoundingClientRect().width))}; })"""
    )
    assert len(cut) == 3 and all(not c["tall"] and not c["wide"] for c in cut), cut
    retrieved = tables.locator("table").nth(2)
    assert retrieved.locator("tbody tr").count() >= 1 and LONG_NAME in retrieved.inner_text()
    page.get_by_role("tab", name="Evidence").click()


def test_ask_comes_back_after_a_failed_question_and_after_stop(page) -> None:
    # A question that fails: URaG and REFRAG switched on together (the answerer takes one).
    page.get_by_role("tab", name="Transparency").click()
    page.get_by_text("Stage switches for the next question").click()
    switches = [page.get_by_label("URaG (the model"), page.get_by_label("REFRAG (evidence")]
    for switch in switches:
        switch.check()
    page.locator("#folio-question textarea").fill("What does Folio do?")
    page.locator("#folio-ask").click()
    page.locator("#folio-chat").get_by_text("Could not answer.").wait_for(timeout=60_000)
    page.wait_for_function("() => !document.querySelector('#folio-ask').disabled", timeout=30_000)
    for switch in switches:
        switch.uncheck()
    page.get_by_text("Stage switches for the next question").click()
    page.get_by_role("tab", name="Evidence").click()
    # Stop while the question runs: Ask comes back and no status line is left behind.
    page.locator("#folio-question textarea").fill(QUESTION)
    page.locator("#folio-ask").click()
    page.wait_for_function("() => document.querySelector('#folio-ask').disabled", timeout=30_000)
    page.locator("#folio-stop").click()
    page.wait_for_function("() => !document.querySelector('#folio-ask').disabled", timeout=30_000)
    page.wait_for_timeout(1500)
    # Stopped before or while it streamed (marked so), or finished first (then with its chip).
    last = _last_reply(page)
    finished = page.locator("#folio-chat .message.bot, #folio-chat [data-testid='bot']").last.locator(
        'a[href*="#folio-cite-"]'
    )
    assert last == "Stopped before the answer began." or last.endswith("(stopped)") or finished.count(), last
    assert page.locator("#folio-ask").is_enabled()


def test_a_cancelled_delete_says_nothing_and_keeps_the_choice(page) -> None:
    page.get_by_text("Delete a document").click()
    page.locator("#folio-delete-doc input").click()
    page.get_by_role("option", name=f"{LONG_NAME} (2 p.)").click()
    dialogs: list[str] = []

    def dismiss(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.locator("#folio-delete").click()
    page.wait_for_timeout(1500)
    assert dialogs == ["Delete this document and everything derived from it?"]
    assert "Choose a document" not in page.locator("#folio-delete-note").inner_text()
    assert page.locator("#folio-delete-doc input").input_value() == f"{LONG_NAME} (2 p.)"
    assert LONG_NAME in page.locator("#folio-documents").inner_text()


def test_remove_failed_uploads_removes_them_all_after_one_confirm(page, files) -> None:
    _upload(page, files["empty"], files["garbage"], done="Failed:")
    page.wait_for_function(
        "() => document.querySelectorAll('#folio-progress .folio-bad').length === 2", timeout=120_000
    )
    documents = page.locator("#folio-documents")
    documents.get_by_text("garbage.pdf", exact=True).wait_for(timeout=30_000)
    assert documents.get_by_text("failed", exact=True).count() == 2
    button = page.locator("#folio-remove-failed")
    assert button.inner_text().strip() == "Remove failed uploads (2)"
    _shot(page, "04-failed-uploads")
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    button.click()
    page.locator("#folio-delete-note").get_by_text("Removed 2 failed uploads.").wait_for(timeout=60_000)
    page.remove_listener("dialog", accept)
    assert dialogs == ["Remove every failed upload from the library?"]
    assert "failed" not in documents.inner_text() and LONG_NAME in documents.inner_text()
    assert page.locator("#folio-progress .folio-bad").count() == 0
    assert not button.is_visible()


def test_after_a_delete_the_document_leaves_the_page_and_its_chips_name_the_file(page, files) -> None:
    info = page.locator("#folio-page-info")
    info.get_by_text(LONG_NAME).first.wait_for(timeout=30_000)  # the cited page is shown
    _upload(page, files["long"], done="Already in the library")  # its row in the progress box
    page.locator("#folio-delete-doc input").click()
    page.get_by_role("option", name=f"{LONG_NAME} (2 p.)").click()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#folio-delete").click()
    page.locator("#folio-delete-note").get_by_text("Deleted").wait_for(timeout=60_000)
    page.get_by_text("The library is empty").wait_for(timeout=30_000)
    assert LONG_NAME not in page.locator("#folio-progress").inner_text()
    info.get_by_text(f"{LONG_NAME} (deleted)").wait_for(timeout=30_000)
    assert page.locator("#folio-page img").count() == 0
    assert not page.locator("#folio-figures").is_visible()
    page.locator("#folio-next").click()
    page.wait_for_timeout(1000)
    page.locator('#folio-chat a[href*="#folio-cite-"]').first.click()
    info.get_by_text(f"{LONG_NAME} (deleted)").wait_for(timeout=30_000)
    text = info.inner_text()
    assert "no document" not in text and "no longer in your library" in text
    _shot(page, "05-after-delete")
