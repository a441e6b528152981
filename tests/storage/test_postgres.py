"""The same library on SQLite and on PostgreSQL: ingest, search, ask, delete and `folio check`
end to end, text PostgreSQL cannot store as given, and concurrent writers on one server."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import Folio
from pipeline.config import ChunkConfig, IngestConfig, ParseConfig
from pipeline.ingestion.ingest import store_parsed
from pipeline.ingestion.parse import parse_pdf
from storage import Block, Chunk, Document, DocumentStatus, Page, StorageConfig, open_library


def _settings(tiny_lm_dir: Path, database_url: str | None) -> dict:
    return {
        "database_url": database_url,
        "retrieval": {"mode": "bm25", "fusion": {"dense_weight": 0, "splade_weight": 0}},
        "parse": {"ocr": "never"},
        "ingest": {"workers": 1},
        "generator": {"model": str(tiny_lm_dir), "device": "cpu"},
        "answer": {"max_new_tokens": 3, "token_budget": 400, "sampler": {"image_features": False}},
    }


@pytest.fixture(autouse=True)
def _fake_text_encoder(bow_encoder_class):  # noqa: ANN001, ANN202 - a fixture
    """The answerer's sampler builds MiniLM when the index has no dense part: use the fake."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("models.encoders.MiniLMEncoder", lambda _config=None: bow_encoder_class())
        yield


def test_ingest_search_ask_delete_check(
    database_url: str | None, tmp_path: Path, sample_pdf: Path, tiny_lm_dir: Path
) -> None:
    with Folio(library=tmp_path / "lib", **_settings(tiny_lm_dir, database_url)) as folio:
        assert folio.library.engine.dialect.name == ("postgresql" if database_url else "sqlite")
        (result,) = folio.ingest([sample_pdf])
        assert result.status == "added" and result.pages == 2 and result.chunks > 0
        (doc,) = folio.documents()
        assert (doc.file_name, doc.pages, doc.chunks, doc.status) == ("folio-guide.pdf", 2, result.chunks, "ok")
        assert doc.created.tzinfo is None  # UTC, stored without a zone on both

        hits = folio.search("SHA-256 hash identifies a document", k=3)
        assert hits and {h.doc_id for h in hits} == {doc.doc_id}
        answer = folio.ask("How is a document identified?", doc_ids=[doc.doc_id[:12]])
        assert answer.error is None and answer.evidence
        for citation in answer.citations:
            assert citation.block_id in answer.evidence[citation.evidence - 1].block_ids

        report = folio.check()
        assert report.ok, [f.line() for f in report.findings]
        assert (report.documents, report.chunks) == (1, result.chunks)
        (again,) = folio.ingest([sample_pdf])
        assert again.status == "unchanged"

        # What scale-out starts from: another machine's library folder on the same database
        # sees the document, its own search index built from the stored chunks.
        shared = _settings(tiny_lm_dir, folio.library.engine.url.render_as_string(hide_password=False))
        with Folio(library=tmp_path / "elsewhere", **shared) as elsewhere:
            assert [d.doc_id for d in elsewhere.documents()] == [doc.doc_id]
            assert elsewhere.search("SHA-256 hash identifies a document", k=3)[0].doc_id == doc.doc_id

        # An id prefix as a user may type it: upper case, on both databases.
        with pytest.raises(LookupError, match="no document"):
            folio.delete("%")
        removed = folio.delete(doc.doc_id[:10].upper())
        assert removed.doc_id == doc.doc_id
        assert folio.documents() == [] and folio.search("SHA-256", k=3) == []
        with folio.library.sessions() as session:
            for table in (Page, Block, Chunk):
                assert session.scalar(select(func.count()).select_from(table)) == 0
        assert folio.check().ok


def test_text_postgresql_cannot_store_as_given_is_kept(database_url: str | None, tmp_path: Path) -> None:
    library = open_library(StorageConfig(library=tmp_path / "lib", database_url=database_url))
    long_title = "T" * 3000
    with library.sessions() as session, session.begin():
        session.add(
            Document(
                id="ab" * 32, file_name="nul\x00name.pdf", title=long_title, parser_version="p",
                status=DocumentStatus.OK, error="a\x00b",
            )
        )  # fmt: skip
        session.flush()
        session.add(Page(doc_id="ab" * 32, number=1, width=1.0, height=1.0, text="x\x00y"))
    with library.sessions() as session:
        doc = session.get(Document, "ab" * 32)
        assert (doc.file_name, doc.error) == ("nul\ufffdname.pdf", "a\ufffdb")
        assert doc.title == long_title[:1024]
        assert session.scalar(select(Page.text)) == "x\ufffdy"
        assert doc.owner_id is None
        assert session.scalars(select(Document.id).where(Document.id_prefix("AB_"))).all() == []
        assert session.scalars(select(Document.id).where(Document.id_prefix("ABAB"))).all() == ["ab" * 32]
    library.close()


def _shape(session, doc_id: str) -> tuple:  # noqa: ANN001 - a Session
    """A document's chunks with the blocks they cite, by page and reading order (not by id)."""
    blocks = {b.id: (b.page, b.reading_order, b.kind, b.text) for b in session.scalars(select(Block).where(Block.doc_id == doc_id))}
    pages = session.scalar(select(func.count()).select_from(Page).where(Page.doc_id == doc_id))
    chunks = session.scalars(select(Chunk).where(Chunk.doc_id == doc_id).order_by(Chunk.ordinal))
    return pages, tuple((c.text, tuple(blocks[i] for i in c.block_ids)) for c in chunks)


def test_concurrent_writers_on_postgresql(postgres_url: str, tmp_path: Path, sample_pdf: Path) -> None:
    """Four threads store documents at once: every document whole, its chunks citing its own
    blocks as when stored alone in SQLite (block ids of different documents interleave)."""
    parsed = parse_pdf(sample_pdf, ParseConfig(ocr="never"))
    store = {"chunk_config": ChunkConfig(), "ingest_config": IngestConfig(keep_source=False), "index": None}
    alone = open_library(StorageConfig(library=tmp_path / "alone"))
    store_parsed(parsed, sample_pdf, alone, **store)
    with alone.sessions() as session:
        expected = _shape(session, parsed.doc_id)
    alone.close()

    library = open_library(StorageConfig(library=tmp_path / "lib", database_url=postgres_url))
    per_thread, threads = 3, 4
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def write(t: int) -> None:
        start.wait()
        try:
            for j in range(per_thread):
                doc = replace(parsed, doc_id=f"{t:02d}{j:02d}".ljust(64, "0"))
                store_parsed(doc, sample_pdf, library, **store)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    with library.sessions() as session:
        doc_ids = session.scalars(select(Document.id)).all()
        assert len(doc_ids) == threads * per_thread
        assert expected[0] == 2 and expected[1]
        for doc_id in doc_ids:
            assert _shape(session, doc_id) == expected, doc_id
    library.close()


def test_a_document_stored_meanwhile_by_another_process_is_replaced(
    database_url: str | None, tmp_path: Path, sample_pdf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers of the same new PDF both find no row; the later insert collides on the key
    and is retried as a replacement (here the other writer's commit is simulated: the existence
    check is made to miss once)."""
    from sqlalchemy.orm import Session

    parsed = parse_pdf(sample_pdf, ParseConfig(ocr="never"))
    store = {"chunk_config": ChunkConfig(), "ingest_config": IngestConfig(keep_source=False), "index": None}
    library = open_library(StorageConfig(library=tmp_path / "lib", database_url=database_url))
    store_parsed(parsed, sample_pdf, library, **store)
    with library.sessions() as session:
        expected = _shape(session, parsed.doc_id)

    real_get = Session.get
    misses = []

    def get_missing_once(self, entity, ident, **kwargs):  # noqa: ANN001, ANN202 - Session.get's
        if entity is Document and not misses:
            misses.append(ident)
            return None
        return real_get(self, entity, ident, **kwargs)

    monkeypatch.setattr(Session, "get", get_missing_once)
    result = store_parsed(parsed, sample_pdf, library, **store)
    assert misses == [parsed.doc_id] and result.status == "added"
    with library.sessions() as session:
        assert session.scalars(select(Document.id)).all() == [parsed.doc_id]
        assert _shape(session, parsed.doc_id) == expected
    library.close()
