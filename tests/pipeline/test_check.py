"""check_library: what it finds on a sound library, on leftovers of a killed run, on broken
documents and on a torn index, and what `repair` does about each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

import pipeline.library.search as search_module
from models.config import EncoderConfig
from pipeline.config import ChunkConfig, IngestConfig, OcrMode, ParseConfig
from pipeline.ingestion.ingest import ingest
from pipeline.library.check import Severity, check_library
from pipeline.library.search import LibraryIndex
from retrieval import DenseIndex, HybridRetriever, RetrievalConfig, RetrievalMode, inspect_saved
from retrieval.config import FusionConfig
from storage import Chunk, Document, DocumentStatus, Page, StorageConfig, open_library

BM25_ONLY = RetrievalConfig(mode="bm25", fusion=FusionConfig(dense_weight=0, splade_weight=0))
HYBRID = RetrievalConfig()  # BM25 + dense (the fake bag-of-words encoder here)


@pytest.fixture
def library(tmp_path: Path):
    lib = open_library(StorageConfig(library=tmp_path / "lib"))
    yield lib
    lib.close()


@pytest.fixture(autouse=True)
def fake_dense(monkeypatch, bow_encoder_class) -> None:
    """The dense model, where the settings keep a dense index, is the instant fake."""

    def make_encoders(modes, *_args, **_kwargs):
        return (bow_encoder_class() if RetrievalMode.DENSE in modes else None), None

    monkeypatch.setattr(search_module, "make_encoders", make_encoders)


def _ingest(library, paths, retrieval=BM25_ONLY):
    index = LibraryIndex(library, retrieval, EncoderConfig())
    results = ingest(
        paths, library, parse_config=ParseConfig(ocr=OcrMode.NEVER), chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(workers=1), index=index,
    )  # fmt: skip
    return results, index


@pytest.fixture
def small_pdf(tmp_path: Path) -> Path:
    """A one-page PDF, quick to ingest beside the sample guide."""
    import pymupdf

    path = tmp_path / "small.pdf"
    with pymupdf.open() as doc:
        page = doc.new_page()
        page.insert_text((72, 72), "Propeller slipstream over the wing.\nBoundary layer heat transfer.")
        doc.save(path)
    return path


def _check(library, retrieval=BM25_ONLY, **kwargs):
    return check_library(library, retrieval, EncoderConfig(), **kwargs)


def test_a_sound_library_has_nothing_to_report(library, sample_pdf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"")
    _ingest(library, [sample_pdf, bad])
    report = _check(library)
    assert report.ok and report.findings == []
    assert (report.documents, report.failed_documents, report.index_parts) == (2, 1, ("bm25",))
    assert report.chunks > 0 and report.index_generation == HybridRetriever.saved_generation(library.index_dir)
    assert report.summary().startswith("ok: 2 documents (1 failed)")


def test_leftover_asset_folders_are_removed_by_repair_unless_an_ingest_runs(library, sample_pdf: Path) -> None:
    (result,), _ = _ingest(library, [sample_pdf])
    partial = library.assets_dir / f"{'a' * 64}.partial"
    orphan = library.assets_dir / ("b" * 64)
    for folder in (partial, orphan):
        folder.mkdir()
        (folder / "p1.png").write_bytes(b"x")
    # While an ingest holds its lock, the folders may be its work: neither reported nor touched.
    running = library.ingest_lock()
    running.acquire(shared=True)
    try:
        report = _check(library, repair=True)
    finally:
        running.release()
    assert report.ok and partial.exists() and orphan.exists()
    assert [f.message for f in report.findings if f.area == "assets"] == [
        "an ingest is running: asset files and folders not checked"
    ]
    report = _check(library)
    leftovers = [f for f in report.findings if f.severity == Severity.LEFTOVER]
    assert report.ok and len(leftovers) == 2 and not any(f.repaired for f in leftovers)
    report = _check(library, repair=True)
    assert report.ok and all(f.repaired for f in report.findings)
    assert not partial.exists() and not orphan.exists()
    assert (library.assets_dir / result.doc_id).is_dir()  # the document's own images stay
    assert _check(library).findings == []


def test_images_set_aside_by_a_store_killed_between_its_renames_are_put_back(library, sample_pdf: Path) -> None:
    (result,), _ = _ingest(library, [sample_pdf])
    folder = library.assets_dir / result.doc_id
    # Killed after renaming the old images aside, before moving the new ones into place.
    folder.rename(library.assets_dir / f"{result.doc_id}.old")
    (library.assets_dir / f"{result.doc_id}.partial").mkdir()
    report = _check(library)
    assert not report.ok and not folder.exists()
    assert any(".old: the images of" in f.message and f.severity == Severity.ERROR for f in report.findings)
    report = _check(library, repair=True)
    assert report.ok and folder.is_dir()
    with library.sessions() as s:
        assert s.get(Document, result.doc_id).status == DocumentStatus.OK  # put back, not failed
    assert _check(library).findings == []
    assert sorted(p.name for p in library.assets_dir.iterdir()) == [result.doc_id]


def test_the_next_ingest_puts_set_aside_images_back(library, sample_pdf: Path, small_pdf: Path) -> None:
    (result,), _ = _ingest(library, [sample_pdf])
    folder = library.assets_dir / result.doc_id
    folder.rename(library.assets_dir / f"{result.doc_id}.old")
    _ingest(library, [small_pdf])
    assert folder.is_dir() and not (library.assets_dir / f"{result.doc_id}.old").exists()
    assert _check(library).ok


def test_an_incomplete_document_is_marked_failed_by_repair(library, sample_pdf: Path) -> None:
    (result,), _ = _ingest(library, [sample_pdf])
    with library.sessions() as session, session.begin():
        session.execute(delete(Page).where(Page.doc_id == result.doc_id, Page.number == 2))
    report = _check(library)
    assert not report.ok
    assert [f.line() for f in report.problems] == [
        f"error: documents: {result.doc_id[:12]} folio-guide.pdf: 1 of its 2 pages stored"
    ]
    report = _check(library, repair=True)
    assert report.ok and report.problems == []
    with library.sessions() as session:
        doc = session.get(Document, result.doc_id)
        assert doc.status == DocumentStatus.FAILED and "ingest the file again" in doc.error
        assert not list(session.scalars(select(Chunk.id).where(Chunk.doc_id == result.doc_id)))
    assert report.replayed[1] > 0  # its chunks left the index
    assert _check(library).findings == []
    # Ingesting the file again restores it.
    (again,), _ = _ingest(library, [sample_pdf])
    assert again.status == "added" and _check(library).findings == []


def test_a_missing_image_and_a_failure_without_reason_are_errors(library, sample_pdf: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"")
    (good, failed), _ = _ingest(library, [sample_pdf, bad])
    with library.sessions() as session, session.begin():
        session.execute(update(Document).where(Document.id == failed.doc_id).values(error=""))
        thumbnail = session.scalar(select(Page.thumbnail).where(Page.doc_id == good.doc_id, Page.thumbnail.is_not(None)))
    assert thumbnail, "the sample guide's pages have thumbnails"
    library.asset_path(thumbnail).unlink()
    report = _check(library)
    messages = {f.message.split(":")[0]: f.message for f in report.problems}
    assert len(messages) == 2
    assert messages[f"{failed.doc_id[:12]} bad.pdf"].endswith("failed without a reason")
    assert "image file(s) missing" in messages[f"{good.doc_id[:12]} folio-guide.pdf"]


def test_a_torn_index_is_reported_and_rebuilt_when_opened(library, sample_pdf: Path, small_pdf: Path) -> None:
    results, index = _ingest(library, [sample_pdf], HYBRID)
    old_generation = index.generation
    keep = library.index_dir.parent / "old-index"
    shutil.copytree(library.index_dir, keep)
    _ingest(library, [small_pdf], HYBRID)
    generation = HybridRetriever.saved_generation(library.index_dir)
    # Forge a torn index: the first save's dense part under the second save's name and stamp.
    DenseIndex.load(keep, index.retriever.dense.encoder, generation=old_generation).save(
        library.index_dir, generation=generation
    )
    assert inspect_saved(library.index_dir).problems
    report = _check(library, HYBRID)
    torn = [f for f in report.findings if "torn index" in f.message]
    assert torn and all(f.repaired and f.severity == Severity.ERROR for f in torn)
    assert report.ok, [f.line() for f in report.findings]
    saved = inspect_saved(library.index_dir)
    with library.sessions() as session:
        stored = set(session.scalars(select(Chunk.id)))
    assert not saved.problems and saved.parts == {"bm25": stored, "dense": stored}


def test_a_part_save_that_fails_leaves_an_index_the_next_open_repairs(
    library, sample_pdf: Path, small_pdf: Path, monkeypatch
) -> None:
    _, index = _ingest(library, [sample_pdf], HYBRID)
    first = index.generation
    real_save = DenseIndex.save

    def failing(*_args, **_kwargs) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(DenseIndex, "save", failing)
    with pytest.raises(OSError, match="no space"):
        _ingest(library, [small_pdf], HYBRID)
    monkeypatch.setattr(DenseIndex, "save", real_save)
    saved = inspect_saved(library.index_dir)
    assert saved.generation == first and not saved.problems and saved.stray  # the new BM25 part
    report = _check(library, HYBRID)
    assert report.ok and report.replayed[0] > 0
    with library.sessions() as session:
        stored = set(session.scalars(select(Chunk.id)))
    assert inspect_saved(library.index_dir).parts == {"bm25": stored, "dense": stored}
