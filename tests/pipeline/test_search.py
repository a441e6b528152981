import shutil
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from models.config import EncoderConfig
from pipeline.config import ChunkConfig, IngestConfig, OcrMode, ParseConfig
from pipeline.ingestion.ingest import delete_document, ingest
from pipeline.library.search import LibraryIndex
from retrieval.config import FusionConfig, RetrievalConfig
from storage import Chunk, StorageConfig, open_library

BM25_ONLY = RetrievalConfig(mode="bm25", fusion=FusionConfig(dense_weight=0, splade_weight=0))


def _ingest(library, index, paths):
    return ingest(
        paths, library, parse_config=ParseConfig(ocr=OcrMode.NEVER), chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(workers=1), index=index,
    )


@pytest.fixture
def library(tmp_path: Path):
    lib = open_library(StorageConfig(library=tmp_path / "lib"))
    yield lib
    lib.close()


def test_ingest_indexes_and_search_cites_pages(library, sample_pdf: Path) -> None:
    index = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    (result,) = _ingest(library, index, [sample_pdf])
    hits = index.search("default settings of each stage chunk size", k=3)
    assert hits[0].kind == "table" and hits[0].page == 2 and hits[0].file_name == "folio-guide.pdf"
    assert hits[0].doc_id == result.doc_id and hits[0].block_ids
    # A fresh index object loads what was saved.
    again = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    assert [h.chunk_id for h in again.search("default settings of each stage chunk size", k=3)] == [
        h.chunk_id for h in hits
    ]
    with pytest.raises(ValueError, match="empty query"):
        index.search("  ")


def test_search_scopes_by_id_prefix_or_file_name(library, sample_pdf: Path) -> None:
    index = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    (result,) = _ingest(library, index, [sample_pdf])
    query = "default settings of each stage chunk size"
    by_id = index.search(query, k=3, doc_ids=[result.doc_id[:8]])
    assert by_id and [h.chunk_id for h in index.search(query, k=3, doc_ids=["folio-guide.pdf"])] == [
        h.chunk_id for h in by_id
    ]
    with pytest.raises(LookupError, match="no document with id or file name 'other.pdf'"):
        index.search(query, k=3, doc_ids=["other.pdf"])


def test_index_is_repaired_from_the_database(library, sample_pdf: Path) -> None:
    index = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    _ingest(library, index, [sample_pdf])
    with library.sessions() as s:
        stored = set(s.scalars(select(Chunk.id)))
    # A crash after the commit but before the index was saved: the index is gone.
    shutil.rmtree(library.index_dir)
    fresh = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    assert set(fresh.retriever.bm25.chunk_ids()) == stored
    # Chunks deleted behind the index's back are dropped on the next open.
    with library.sessions() as s, s.begin():
        s.execute(delete(Chunk).where(Chunk.ordinal == 0))
    reopened = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    assert len(reopened.retriever) == len(stored) - 1


def test_changed_settings_rebuild_the_index(library, sample_pdf: Path, caplog) -> None:
    index = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    _ingest(library, index, [sample_pdf])
    other = BM25_ONLY.model_copy(update={"bm25": BM25_ONLY.bm25.model_copy(update={"k1": 1.5})})
    messages = []
    rebuilt = LibraryIndex(library, other, EncoderConfig(), on_status=messages.append)
    assert rebuilt.search("Figure 1 path of a question", k=1)[0].page == 2
    assert any("rebuilding" in m for m in messages)


def test_doc_filter_and_delete(library, sample_pdf: Path, papers_dir: Path) -> None:
    index = LibraryIndex(library, BM25_ONLY, EncoderConfig())
    results = _ingest(library, index, [sample_pdf, papers_dir / "unstructured__multi-column_DPR.pdf"])
    dpr = results[1].doc_id
    hits = index.search("dense passage retrieval", k=5, doc_ids=[dpr[:12]])
    assert hits and {h.doc_id for h in hits} == {dpr}
    with pytest.raises(LookupError, match="no document"):
        index.search("x", doc_ids=["zzzz"])
    delete_document(library, dpr, index)
    assert all(h.doc_id != dpr for h in index.search("dense passage retrieval", k=5))


@pytest.mark.slow
def test_hybrid_prf_with_real_encoders(library, sample_pdf: Path) -> None:
    index = LibraryIndex(library, RetrievalConfig(), EncoderConfig())
    _ingest(library, index, [sample_pdf])
    hits = index.search("how is a PDF identified so that it is not stored twice?", k=3)
    assert "SHA-256" in hits[0].text
