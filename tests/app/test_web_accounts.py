"""Several users on one `folio serve`, in a real browser: each login sees, asks about and deletes
only its own documents, and an upload by one never shows up for another.

Accounts are made with `pipeline.library.owners.add_user` before the server starts (what `folio user
add` does); each user signs in through Gradio's login route in a browser context of their own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.library.owners import add_user
from storage import StorageConfig, open_library

PAPER = "unstructured__multi-column_DPR.pdf"  # 13 pages, text layer
QUESTION = "Which retriever is trained on question and passage pairs?"
USERS = {"alice": "alice-password", "bob": "bob-password"}

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (make system-deps installs it)"
)


@pytest.fixture(scope="module")
def server(start_folio_server, tiny_settings, tmp_path_factory: pytest.TempPathFactory):
    def accounts(library: Path) -> None:
        opened = open_library(StorageConfig(library=library))
        for name, password in USERS.items():
            add_user(opened, name, password)
        opened.close()

    settings = tiny_settings(max_new_tokens=4, serve={"max_upload_mb": 20})
    artifacts = tmp_path_factory.mktemp("accounts-artifacts")
    url, _log = start_folio_server(settings, artifacts, prepare=accounts)
    return url


def _signed_in(browser, url: str, name: str):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    reply = context.request.post(f"{url}login", form={"username": name, "password": USERS[name]})
    assert reply.ok, reply.text()
    page = context.new_page()
    page.goto(url)
    return context, page


def _upload(page, path: Path) -> None:
    page.locator("#folio-upload input[type=file]").set_input_files(str(path))
    page.locator("#folio-progress").get_by_text("Ready:").wait_for(timeout=180_000)
    page.locator("#folio-documents").get_by_text(path.name).wait_for(timeout=30_000)


def _ask(page, question: str) -> str:
    page.locator("#folio-question textarea").fill(question)
    page.locator("#folio-ask").click()
    bot = page.locator("#folio-chat .message.bot, #folio-chat [data-testid='bot']").last
    page.wait_for_function(
        """() => { const bots = document.querySelectorAll('#folio-chat .message.bot, #folio-chat [data-testid="bot"]');
                   const last = bots[bots.length - 1];
                   return last && !/Reading|Loading|…$|\\(\\d+ s\\)$/.test(last.innerText.trim()); }""",
        timeout=180_000,
    )
    return bot.inner_text()


def test_a_wrong_password_is_refused(server, browser) -> None:
    context = browser.new_context()
    try:
        reply = context.request.post(f"{server}login", form={"username": "alice", "password": "bob-password"})
        assert reply.status == 400
        assert context.request.get(f"{server}config").status == 401
    finally:
        context.close()


def test_each_user_sees_only_their_own_library(server, browser, papers_dir: Path) -> None:
    alice, alice_page = _signed_in(browser, server, "alice")
    bob, bob_page = _signed_in(browser, server, "bob")
    try:
        alice_page.get_by_text("The library is empty").wait_for(timeout=60_000)
        _upload(alice_page, papers_dir / PAPER)
        alice_page.locator("#folio-ask-about").get_by_text(PAPER).wait_for()

        # Bob, signed in at the same time and after the upload, sees an empty library.
        bob_page.reload()
        bob_page.get_by_text("The library is empty").wait_for(timeout=60_000)
        assert PAPER not in bob_page.locator("#folio-ask-about").inner_text()
        assert PAPER not in bob_page.locator("#folio-progress").inner_text()  # not his upload

        # Bob's question finds nothing of Alice's: no evidence, no citation chip.
        reply = _ask(bob_page, QUESTION)
        assert bob_page.locator('#folio-chat a[href*="#folio-cite-"]').count() == 0, reply
        bob_page.get_by_role("tab", name="Transparency").click()
        assert PAPER not in bob_page.locator("body").inner_text()

        # Alice's question reads her paper and cites it.
        _ask(alice_page, QUESTION)
        alice_page.locator('#folio-chat a[href*="#folio-cite-"]').first.wait_for(timeout=60_000)

        # Bob uploads the same file: his own copy, which Alice's delete leaves alone.
        _upload(bob_page, papers_dir / PAPER)
        alice_page.get_by_text("Delete a document").click()
        alice_page.locator("#folio-delete-doc input").click()
        alice_page.get_by_role("option", name=f"{PAPER} (13 p.)").click()
        alice_page.once("dialog", lambda dialog: dialog.accept())
        alice_page.locator("#folio-delete").click()
        alice_page.locator("#folio-delete-note").get_by_text("Deleted").wait_for(timeout=60_000)
        alice_page.get_by_text("The library is empty").wait_for(timeout=30_000)
        bob_page.reload()
        bob_page.locator("#folio-documents").get_by_text(PAPER).wait_for(timeout=60_000)
        assert "ready" in bob_page.locator("#folio-documents").inner_text()
    finally:
        alice.close()
        bob.close()
