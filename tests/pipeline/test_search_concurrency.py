"""LibraryIndex under threads (searches while chunks come and go) and under two "processes"
(two LibraryIndex objects on one library: separate memory, separate lock-file handles).

Rows are written straight to the database, then handed to the index, as ingestion does (commit
first, then `add`); the dense part uses the hashed bag-of-words encoder of tests/conftest.py.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from sqlalchemy import delete, select

import pipeline.library.search as search_module
from models.config import EncoderConfig
from pipeline.library.search import LibraryIndex, ReadWriteLock
from retrieval import HybridRetriever, RetrievalConfig, inspect_saved
from storage import Chunk, Document, DocumentStatus, StorageConfig, open_library

WORDS = ["wing", "propeller", "boundary", "layer", "heat", "blood", "pressure", "retrieval", "passage", "encoder", "table", "figure"]


@pytest.fixture
def library(tmp_path: Path):
    lib = open_library(StorageConfig(library=tmp_path / "lib"))
    yield lib
    lib.close()


@pytest.fixture(autouse=True)
def fake_dense(monkeypatch, bow_encoder_class) -> None:
    """The index's dense model is the instant fake (MiniLM is exercised by the slow tests)."""
    monkeypatch.setattr(search_module, "make_encoders", lambda *_a, **_k: (bow_encoder_class(), None))


def _index(library) -> LibraryIndex:
    return LibraryIndex(library, RetrievalConfig(), EncoderConfig())


def _doc_id(n: int) -> str:
    return f"{n:016d}" + "f" * 48  # chunk ids take the first 16 characters


def _store(library, n: int, chunks: int = 12, seed: int = 0) -> list[tuple[str, str]]:
    """Commit document n with `chunks` chunks (each with the marker word `docN`); return them."""
    rng = random.Random(seed * 1000 + n)
    doc_id = _doc_id(n)
    rows = [
        (f"{doc_id[:16]}:{i}", f"doc{n} " + " ".join(rng.choices(WORDS, k=12)))
        for i in range(chunks)
    ]
    with library.sessions() as session, session.begin():
        session.add(
            Document(id=doc_id, file_name=f"d{n}.pdf", title=None, page_count=1,
                     parser_version="test", status=DocumentStatus.OK, error=None)
        )  # fmt: skip
        session.flush()
        session.add_all(
            Chunk(id=cid, doc_id=doc_id, ordinal=i, kind="text", page_start=1, page_end=1,
                  block_ids=[], text=text, token_count=14)
            for i, (cid, text) in enumerate(rows)
        )  # fmt: skip
    return rows


def _unstore(library, n: int) -> list[str]:
    doc_id = _doc_id(n)
    with library.sessions() as session, session.begin():
        ids = list(session.scalars(select(Chunk.id).where(Chunk.doc_id == doc_id)))
        session.execute(delete(Document).where(Document.id == doc_id))
    return ids


def _stored(library) -> dict[str, str]:
    with library.sessions() as session:
        return {cid: text for cid, text in session.execute(select(Chunk.id, Chunk.text))}


def test_searches_while_chunks_are_added_and_removed(library) -> None:
    for n in range(5):
        _store(library, n)
    index = _index(library)
    index.sync()
    errors: list[BaseException] = []
    ever: dict[str, str] = dict(_stored(library))
    ever_lock = threading.Lock()
    stop = threading.Event()
    searched = [0]

    def searcher(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                query = " ".join(rng.choices(WORDS, k=3))
                mode = rng.choice(["bm25", "dense", "hybrid", "hybrid-prf"])
                for hit in index.search(query, k=8, mode=mode):
                    with ever_lock:
                        assert ever.get(hit.chunk_id) == hit.text  # a chunk that was stored
                searched[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def writer(first: int) -> None:
        try:
            for n in range(first, first + 12):
                rows = _store(library, n)
                with ever_lock:
                    ever.update(rows)
                index.add(rows)
                # Read-your-writes: once `add` returns, the new chunks are searchable.
                hits = index.search(f"doc{n}", k=3, mode="bm25")
                assert hits and all(h.chunk_id.startswith(f"{n:016d}:") for h in hits)
                if n % 3 == 0:
                    index.remove(_unstore(library, n - 2))
                if n % 4 == 0:
                    index.flush()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    searchers = [threading.Thread(target=searcher, args=(s,)) for s in range(4)]
    writers = [threading.Thread(target=writer, args=(first,)) for first in (100, 200)]
    for t in searchers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in searchers:
        t.join()
    assert not errors, errors[0]
    assert searched[0] > 0
    stored = set(_stored(library))
    assert index.part_chunk_ids() == {"bm25": stored, "dense": stored}
    index.flush()
    assert index.sync() == (0, 0)
    assert inspect_saved(library.index_dir).chunk_ids == stored


def test_read_write_lock_excludes_writers_from_readers() -> None:
    lock = ReadWriteLock()
    inside: list[str] = []
    seen: list[tuple[str, ...]] = []
    guard = threading.Lock()

    def enter(kind: str, hold: threading.Event) -> None:
        with lock.read() if kind == "r" else lock.write():
            with guard:
                inside.append(kind)
                seen.append(tuple(inside))
            hold.wait(0.05)
            with guard:
                inside.remove(kind)

    hold = threading.Event()
    threads = [threading.Thread(target=enter, args=("rw"[i % 3 == 0], hold)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any(s.count("r") > 1 for s in seen)  # readers shared the lock
    assert all("w" not in s or s == ("w",) for s in seen)  # a writer was always alone


def test_another_process_save_is_picked_up_and_merged(library) -> None:
    _store(library, 1)
    web = _index(library)  # a long-running process
    cli = _index(library)  # `folio ingest` in a terminal
    web.sync()
    assert not web.search("doc2", k=3, mode="bm25")
    cli.add(_store(library, 2))
    cli.flush()
    # The web app sees the terminal's chunks at its next search (a newer generation on disk).
    assert web.search("doc2", k=3, mode="bm25")
    assert web.generation == cli.generation
    # Both write: the web app's save does not drop the terminal's newer chunks.
    web.add(_store(library, 3))
    cli.add(_store(library, 4))
    cli.flush()
    web.flush()
    stored = set(_stored(library))
    assert inspect_saved(library.index_dir).chunk_ids == stored
    assert web.part_chunk_ids()["dense"] == stored
    assert cli.search("doc3", k=3, mode="dense") and cli.part_chunk_ids()["bm25"] == stored
    assert HybridRetriever.saved_generation(library.index_dir) == web.generation == cli.generation


def test_a_document_stored_again_is_replayed_with_its_new_texts(library) -> None:
    """`--reindex` keeps chunk ids; killed after its commit and before the index save, the
    saved index holds the old texts under the new rows' ids: the next open must notice."""
    doc_id = _doc_id(1)
    rows = [(f"{doc_id[:16]}:{i}", f"alpha wing {i}") for i in range(6)]
    with library.sessions() as session, session.begin():
        session.add(Document(id=doc_id, file_name="d1.pdf", title=None, page_count=0,
                             parser_version="v1", status=DocumentStatus.OK, error=None))  # fmt: skip
        session.flush()
        session.add_all(Chunk(id=cid, doc_id=doc_id, ordinal=i, kind="text", page_start=1, page_end=1,
                              block_ids=[], text=t, token_count=3) for i, (cid, t) in enumerate(rows))  # fmt: skip
    first = _index(library)
    first.add(rows)
    first.flush()
    # Stored again as `_store` does (delete, insert), with new texts; the process dies before
    # it touches the index.
    with library.sessions() as session, session.begin():
        session.execute(delete(Document).where(Document.id == doc_id))
    with library.sessions() as session, session.begin():
        session.add(Document(id=doc_id, file_name="d1.pdf", title=None, page_count=0,
                             parser_version="v2", status=DocumentStatus.OK, error=None))  # fmt: skip
        session.flush()
        session.add_all(Chunk(id=cid, doc_id=doc_id, ordinal=i, kind="text", page_start=1, page_end=1,
                              block_ids=[], text=f"omega wing {i}", token_count=3) for i, (cid, _) in enumerate(rows))  # fmt: skip
    reopened = _index(library)
    assert reopened.sync() == (6, 0)
    assert len(reopened.search("omega", k=10, mode="bm25")) == 6
    assert reopened.search("alpha", k=10, mode="bm25") == []
    assert {h.text.split()[0] for h in reopened.search("omega wing", k=10, mode="dense")} == {"omega"}
    assert _index(library).sync() == (0, 0)  # the replay was saved with the new versions
