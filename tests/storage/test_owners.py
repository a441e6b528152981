"""Several users in one library database: each sees, searches, asks about and deletes only their
own documents, on SQLite and on PostgreSQL; accounts and their passwords."""

from __future__ import annotations

from pathlib import Path

import pymupdf
import pytest
from sqlalchemy import select

from app import Folio
from pipeline.ingestion.parse import sha256_file
from pipeline.library.owners import (
    add_user,
    check_login,
    list_users,
    owned_chunk_ids,
    owned_doc_id,
    remove_user,
    set_password,
)
from storage import Document, StorageConfig, User, open_library

SECRET = "The merger code name is Bluefinch and the price is 41 dollars per share."


@pytest.fixture(autouse=True)
def _fake_text_encoder(bow_encoder_class):  # noqa: ANN001, ANN202 - a fixture
    """The answerer's sampler builds MiniLM when the index has no dense part: use the fake."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("models.encoders.MiniLMEncoder", lambda _config=None: bow_encoder_class())
        yield


def _pdf(path: Path, text: str) -> Path:
    doc = pymupdf.open()
    doc.new_page().insert_textbox(pymupdf.Rect(72, 72, 540, 720), text, fontsize=11)
    doc.save(path)
    doc.close()
    return path


def _folio(tmp_path: Path, database_url: str | None, tiny_settings, user: str | None) -> Folio:
    return Folio(library=tmp_path / "lib", database_url=database_url, user=user, **tiny_settings())


def test_users_see_only_their_own_documents(
    database_url: str | None, tmp_path: Path, sample_pdf: Path, tiny_settings
) -> None:
    secret = _pdf(tmp_path / "board-minutes.pdf", SECRET + " " + "Quarterly board minutes. " * 20)
    alice = _folio(tmp_path, database_url, tiny_settings, "alice")
    bob = alice.as_user("bob")
    local = alice.as_user(None)
    try:
        assert [r.status for r in alice.ingest([secret, sample_pdf])] == ["added", "added"]
        (bobs,) = bob.ingest([sample_pdf])
        assert bobs.status == "added"

        # The same bytes are a separate document per owner; the local user's id is the plain hash.
        plain = sha256_file(sample_pdf)
        assert bobs.doc_id == owned_doc_id(plain, "bob") != owned_doc_id(plain, "alice") != plain
        assert {d.file_name for d in alice.documents()} == {"board-minutes.pdf", "folio-guide.pdf"}
        assert [d.doc_id for d in bob.documents()] == [bobs.doc_id]
        assert local.documents() == []
        alice_ids = {d.doc_id for d in alice.documents()}

        # Search, whole library and by id prefix or file name, never crosses owners.
        assert {h.doc_id for h in bob.search("Bluefinch merger price per share", k=20)} <= {bobs.doc_id}
        assert {h.doc_id for h in alice.search("Bluefinch merger price per share", k=3)} <= alice_ids
        assert alice.search("Bluefinch", k=3)[0].file_name == "board-minutes.pdf"
        secret_id = next(d.doc_id for d in alice.documents() if d.file_name == "board-minutes.pdf")
        with pytest.raises(LookupError):
            bob.search("Bluefinch", doc_ids=[secret_id[:12]])
        with pytest.raises(LookupError):
            bob.ask("What is the code name?", doc_ids=["board-minutes.pdf"])
        assert local.search("Bluefinch", k=5) == []

        # Answers read only the asker's documents.
        # (rank order, not the sampler: the fake encoder's sampling is not under test here)
        answer = bob.ask("What is the Bluefinch merger price per share?", sampler=False)
        assert answer.error is None
        assert {e.doc_id for e in answer.evidence} <= {bobs.doc_id}
        assert all("Bluefinch" not in e.text for e in answer.evidence)
        mine = alice.ask("What is the Bluefinch merger price per share?", sampler=False)
        assert any("Bluefinch" in e.text for e in mine.evidence)
        empty = local.ask("What is the merger code name?")
        assert empty.not_answerable and not empty.evidence

        # Deleting: another user's document is not found; one's own copy goes alone.
        with pytest.raises(LookupError):
            bob.delete(secret_id)
        alice_guide = next(d.doc_id for d in alice.documents() if d.file_name == "folio-guide.pdf")
        alice.delete(alice_guide)
        assert [d.doc_id for d in bob.documents()] == [bobs.doc_id]
        assert {h.doc_id for h in bob.search("SHA-256 hash identifies a document", k=3)} == {bobs.doc_id}
        assert {u.name: u.documents for u in list_users(alice.library)} == {"alice": 1, "bob": 1}
        report = alice.check()
        assert report.ok, [f.line() for f in report.findings]
    finally:
        alice.close()


def test_the_owner_filter_is_read_once_until_the_index_changes(
    tmp_path: Path, sample_pdf: Path, tiny_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str | None] = []

    def counted(library, owner):  # noqa: ANN001, ANN202 - wraps the real one
        reads.append(owner)
        return owned_chunk_ids(library, owner)

    monkeypatch.setattr("pipeline.library.search.owned_chunk_ids", counted)
    secret = _pdf(tmp_path / "board-minutes.pdf", SECRET + " " + "Quarterly board minutes. " * 20)
    alice = _folio(tmp_path, None, tiny_settings, "alice")
    bob = alice.as_user("bob")
    try:
        alice.ingest([sample_pdf])
        bob.ingest([sample_pdf])
        reads.clear()
        for _ in range(3):
            assert alice.search("SHA-256 hash identifies a document", k=3)
        assert reads == ["alice"]  # one database read for three searches

        # Each owner has an entry of their own; alice's new document changes the index, so both
        # filters are read again, and only alice's includes it.
        assert {h.doc_id for h in bob.search("SHA-256 hash", k=20)} == {d.doc_id for d in bob.documents()}
        alice.ingest([secret])
        assert alice.search("Bluefinch merger", k=1)[0].file_name == "board-minutes.pdf"
        assert all(h.file_name != "board-minutes.pdf" for h in bob.search("Bluefinch merger", k=20))
        assert reads == ["alice", "bob", "alice", "bob"]

        # A delete changes it too: the deleted document no longer comes back.
        secret_id = next(d.doc_id for d in alice.documents() if d.file_name == "board-minutes.pdf")
        alice.delete(secret_id)
        assert all(h.doc_id != secret_id for h in alice.search("Bluefinch merger", k=20))
        assert reads[-1] == "alice" and len(reads) == 5
    finally:
        alice.close()


def test_a_library_without_users_is_not_filtered(tmp_path: Path, sample_pdf: Path, tiny_settings) -> None:
    with _folio(tmp_path, None, tiny_settings, None) as folio:
        (result,) = folio.ingest([sample_pdf])
        assert result.doc_id == sha256_file(sample_pdf)
        assert owned_chunk_ids(folio.library, None) is None  # search skips the filter
        assert folio.search("SHA-256", k=1)
        with folio.library.sessions() as session:
            assert session.scalar(select(Document.owner_id)) is None


def test_accounts_and_passwords(database_url: str | None, tmp_path: Path) -> None:
    library = open_library(StorageConfig(library=tmp_path / "lib", database_url=database_url))
    try:
        add_user(library, "alice", "correct horse")
        assert check_login(library, "alice", "correct horse")
        assert not check_login(library, "alice", "correct hors")
        assert not check_login(library, "mallory", "correct horse")
        with library.sessions() as session:
            stored = session.scalar(select(User.password_hash).where(User.name == "alice"))
        assert stored.startswith("scrypt$") and "correct horse" not in stored
        with pytest.raises(ValueError, match="exists"):
            add_user(library, "alice", "another password")
        with pytest.raises(ValueError, match="8 characters"):
            add_user(library, "bob", "short")
        for bad in ("", "../etc", "a b", "x" * 129, "-flag"):
            with pytest.raises(ValueError, match="not allowed"):
                add_user(library, bad, "long enough")
        set_password(library, "alice", "battery staple")
        assert check_login(library, "alice", "battery staple")
        assert not check_login(library, "alice", "correct horse")
        with pytest.raises(LookupError):
            set_password(library, "nobody", "long enough")
        remove_user(library, "alice")
        assert list_users(library) == []
        with pytest.raises(LookupError):
            remove_user(library, "alice")
    finally:
        library.close()


def test_a_user_with_documents_cannot_be_removed(tmp_path: Path, sample_pdf: Path, tiny_settings) -> None:
    with _folio(tmp_path, None, tiny_settings, "carol") as folio:
        (result,) = folio.ingest([sample_pdf])
        with pytest.raises(ValueError, match="owns 1 documents"):
            remove_user(folio.library, "carol")
        folio.delete(result.doc_id)
        remove_user(folio.library, "carol")
        assert list_users(folio.library) == []


def test_a_user_created_meanwhile_by_another_upload_is_reused(
    database_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first uploads of a new user at once: the second insert of the name collides and
    re-reads the id (simulated: the existence check is made to miss once)."""
    from sqlalchemy.orm import Session

    from pipeline.library.owners import owner_id

    library = open_library(StorageConfig(library=tmp_path / "lib", database_url=database_url))
    first = owner_id(library, "dora", create=True)
    real_scalar = Session.scalar
    misses = []

    def scalar_missing_once(self, statement, *args, **kwargs):  # noqa: ANN001, ANN202 - Session.scalar's
        if not misses:
            misses.append(statement)
            return None
        return real_scalar(self, statement, *args, **kwargs)

    monkeypatch.setattr(Session, "scalar", scalar_missing_once)
    assert owner_id(library, "dora", create=True) == first and misses
    monkeypatch.undo()
    assert [u.name for u in list_users(library)] == ["dora"]
    library.close()
