"""Block vectors stored at ingest (issue 24): the sampler reads them instead of embedding its
candidates, the evidence is the same either way, a library without them fills them on first
use, and they go with their document."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

import pipeline.library.search as search_module
from models.config import EncoderConfig, GeneratorConfig, SamplerConfig
from models.generator import load_generator
from pipeline.answering.answer import Answerer
from pipeline.config import AnswerConfig, ChunkConfig, IngestConfig, OcrMode, ParseConfig
from pipeline.ingestion.ingest import delete_document, ingest
from pipeline.library.block_vectors import text_hash
from pipeline.library.check import check_library
from pipeline.library.search import LibraryIndex
from retrieval import RetrievalConfig, RetrievalMode
from storage import BlockVector, StorageConfig, open_library

HYBRID = RetrievalConfig()  # BM25 + dense: the dense encoder is the fake below
QUESTIONS = ("What is the default chunk size in tokens?", "How are figures and tables cited?")
FAST = AnswerConfig(max_new_tokens=6, sampler=SamplerConfig(image_features=False))


@pytest.fixture(autouse=True)
def fake_dense(monkeypatch, bow_encoder_class) -> None:
    """The index's dense encoder (and so the ingest's block encoder) is the instant fake."""

    def make_encoders(modes, *_args, **_kwargs):
        return (bow_encoder_class() if RetrievalMode.DENSE in modes else None), None

    monkeypatch.setattr(search_module, "make_encoders", make_encoders)


@pytest.fixture
def counting(bow_encoder_class):
    """A fake encoder that records every text it embeds as a document."""

    class Counting(bow_encoder_class):
        def __init__(self) -> None:
            super().__init__()
            self.documents: list[str] = []

        def encode_documents(self, texts):
            self.documents += list(texts)
            return super().encode_documents(texts)

    return Counting


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir: Path):
    return load_generator(GeneratorConfig(model=str(tiny_lm_dir), device="cpu"))


def _library(root: Path, pdf: Path, *, store: bool):
    library = open_library(StorageConfig(library=root))
    index = LibraryIndex(library, HYBRID, EncoderConfig())
    (result,) = ingest(
        [pdf], library, parse_config=ParseConfig(ocr=OcrMode.NEVER), chunk_config=ChunkConfig(),
        ingest_config=IngestConfig(workers=1, store_block_vectors=store), index=index,
    )  # fmt: skip
    assert result.status == "added"
    return library, index, result.doc_id


def _answerer(library, index, generator, encoder) -> Answerer:
    return Answerer(
        library, index, FAST, GeneratorConfig(model="tiny"),
        load=lambda _config, cache_dir: generator, text_encoder=encoder,
    )  # fmt: skip


def _stored(library) -> int:
    with library.sessions() as session:
        return session.scalar(select(func.count()).select_from(BlockVector))


def test_stored_vectors_spare_the_sampler_every_block_embedding(
    tmp_path: Path, sample_pdf: Path, tiny, counting
) -> None:
    library, index, _ = _library(tmp_path / "lib", sample_pdf, store=True)
    assert _stored(library) > 0
    encoder = counting()
    answerer = _answerer(library, index, tiny, encoder)
    for question in QUESTIONS:
        prepared = answerer.prepare(question)
        assert prepared.items
    assert encoder.documents == []  # the questions alone were embedded
    assert encoder.calls == len(QUESTIONS)
    library.close()


def test_a_stored_vector_is_what_the_sampler_would_compute(
    tmp_path: Path, sample_pdf: Path, tiny, counting
) -> None:
    library, index, _ = _library(tmp_path / "lib", sample_pdf, store=False)
    answerer = _answerer(library, index, tiny, counting())
    answerer.prepare(QUESTIONS[0])  # fills the vectors of its candidates
    with library.sessions() as session:
        lazily = {r.block_id: (r.text_hash, r.vector) for r in session.scalars(select(BlockVector))}
    library.close()
    library, index, _ = _library(tmp_path / "lib2", sample_pdf, store=True)
    with library.sessions() as session:
        at_ingest = {r.block_id: (r.text_hash, r.vector) for r in session.scalars(select(BlockVector))}
    library.close()
    assert lazily and set(lazily) <= set(at_ingest)
    assert all(at_ingest[block_id] == row for block_id, row in lazily.items())


def test_the_evidence_and_prompt_are_the_same_with_and_without_stored_vectors(
    tmp_path: Path, sample_pdf: Path, tiny, counting
) -> None:
    runs = {}
    for store in (False, True):
        library, index, _ = _library(tmp_path / f"lib-{store}", sample_pdf, store=store)
        answerer = _answerer(library, index, tiny, counting())
        runs[store] = [answerer.prepare(q) for q in QUESTIONS]
        library.close()
    for without, with_ in zip(runs[False], runs[True], strict=True):
        assert with_.prompt is not None and with_.prompt == without.prompt
        assert with_.texts == without.texts
        assert [(i.page, i.text, i.score) for i in with_.items] == [
            (i.page, i.text, i.score) for i in without.items
        ]


def test_a_library_without_vectors_fills_them_on_the_first_question(
    tmp_path: Path, sample_pdf: Path, tiny, counting
) -> None:
    library, index, _ = _library(tmp_path / "lib", sample_pdf, store=False)
    assert _stored(library) == 0
    first = counting()
    _answerer(library, index, tiny, first).prepare(QUESTIONS[0])
    assert _stored(library) >= len(set(first.documents)) > 0  # repeated texts embed once
    again = counting()  # a new process: nothing cached in memory
    _answerer(library, index, tiny, again).prepare(QUESTIONS[0])
    assert again.documents == []
    library.close()


def test_vectors_of_another_encoder_or_text_are_ignored(
    tmp_path: Path, sample_pdf: Path, tiny, counting
) -> None:
    library, index, _ = _library(tmp_path / "lib", sample_pdf, store=True)
    other = counting()
    other.name = "another-encoder"
    _answerer(library, index, tiny, other).prepare(QUESTIONS[0])
    assert other.documents  # embedded again, and stored beside the first encoder's
    with library.sessions() as session:
        encoders = set(session.scalars(select(BlockVector.encoder)))
        session.execute(BlockVector.__table__.update().values(text_hash=text_hash("changed")))
        session.commit()
    assert encoders == {"bag-of-words-64", "another-encoder"}
    stale = counting()
    _answerer(library, index, tiny, stale).prepare(QUESTIONS[0])
    assert stale.documents
    library.close()


def test_a_failed_write_back_does_not_fail_the_question(
    tmp_path: Path, sample_pdf: Path, tiny, counting
) -> None:
    library, index, _ = _library(tmp_path / "lib", sample_pdf, store=False)
    with library.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE block_vectors")
    prepared = _answerer(library, index, tiny, counting()).prepare(QUESTIONS[0])
    assert prepared.items and prepared.prompt is not None
    library.close()


def test_a_question_never_waits_for_a_writer_to_store_its_vectors(
    tmp_path: Path, sample_pdf: Path, tiny, counting
) -> None:
    """An ingest holds SQLite's write lock for as long as it stores a document: a question's
    write-back is skipped then, not queued behind it (the connection would wait 30 s)."""
    import sqlite3
    import threading

    library, index, _ = _library(tmp_path / "lib", sample_pdf, store=False)
    answerer = _answerer(library, index, tiny, counting())
    writer = sqlite3.connect(tmp_path / "lib" / "folio.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, as an ingest's transaction holds it
    done = threading.Event()
    asking = threading.Thread(target=lambda: (answerer.prepare(QUESTIONS[0]), done.set()))
    try:
        asking.start()
        # NOTE: generous against the 30 s the lock would cost: this checks waiting, not speed.
        assert done.wait(timeout=20), "the question waited for the writer"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        asking.join()
    assert _stored(library) == 0  # skipped, not written late
    answerer.prepare(QUESTIONS[0])  # the lock is free: this one stores them
    assert _stored(library) > 0
    library.close()


def test_deleting_a_document_deletes_its_vectors_and_check_finds_nothing(
    tmp_path: Path, sample_pdf: Path
) -> None:
    library, index, doc_id = _library(tmp_path / "lib", sample_pdf, store=True)
    report = check_library(library, HYBRID, EncoderConfig(), index=index)
    assert report.ok and report.findings == []
    delete_document(library, doc_id, index)
    assert _stored(library) == 0
    library.close()


def test_a_reindex_stores_vectors_for_a_library_without_them(tmp_path: Path, sample_pdf: Path) -> None:
    library, index, _ = _library(tmp_path / "lib", sample_pdf, store=False)
    assert _stored(library) == 0
    (result,) = ingest(
        [sample_pdf], library, parse_config=ParseConfig(ocr=OcrMode.NEVER),
        chunk_config=ChunkConfig(), ingest_config=IngestConfig(workers=1), index=index,
        reindex=True,
    )  # fmt: skip
    assert result.status == "added" and _stored(library) > 0
    with library.sessions() as session:
        row = session.scalars(select(BlockVector)).first()
    assert np.frombuffer(row.vector, dtype="<f4").shape == (row.dim,)
    library.close()
