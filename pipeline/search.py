"""The library's search index: a hybrid retriever kept in step with the stored chunks.

The database is the source of truth. The index lives in `<library>/index/` and records the
settings it was built with; on open it is compared with the stored chunks and repaired (chunks
missing from it are added, chunks no longer stored are removed), so a crash between the database
commit and the index save never leaves a chunk unsearchable or a hit pointing nowhere. An index
built with other encoder settings is rebuilt from the stored chunks, never queried stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from models.config import EncoderConfig
from pipeline.eval_retrieval import make_encoders
from retrieval import Hit, HybridRetriever, IndexMismatchError, RetrievalConfig, RetrievalMode
from storage import Chunk, Document, DocumentStatus, Library

logger = logging.getLogger(__name__)

_KEY_FILE = "index-key.json"


@dataclass(frozen=True)
class SearchHit:
    """A retrieved chunk with where it comes from."""

    chunk_id: str
    doc_id: str
    file_name: str
    page: int
    kind: str
    score: float
    text: str
    block_ids: tuple[int, ...]


def index_key(retrieval: RetrievalConfig, encoders: EncoderConfig) -> str:
    """Hash of every setting that changes what the index holds (not how it is searched)."""
    relevant = {
        "bm25": retrieval.bm25.model_dump(mode="json"),
        "splade": retrieval.splade.model_dump(mode="json"),
        "dense": retrieval.dense.model_dump(mode="json"),
        "encoders": encoders.model_dump(
            mode="json", include={"dense_model", "sparse_model", "dense_max_length", "sparse_max_length"}
        ),
        "parts": _parts(retrieval),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _parts(config: RetrievalConfig) -> list[str]:
    """Which indexes the library keeps: BM25 always, dense and SPLADE when fusion uses them."""
    parts = ["bm25"]
    if config.fusion.dense_weight > 0 or config.mode == RetrievalMode.DENSE:
        parts.append("dense")
    if config.fusion.splade_weight > 0 or config.mode == RetrievalMode.SPLADE:
        parts.append("splade")
    return parts


class LibraryIndex:
    """Search over a library's chunks; also the `ChunkIndex` that ingestion keeps in step.

    Args:
        library: the open library.
        retrieval: retrieval settings (mode, fusion weights, PRF, index kinds).
        encoders: encoder settings (which dense and SPLADE models).
        on_status: told about slow work (loading models, rebuilding the index).
    """

    def __init__(
        self,
        library: Library,
        retrieval: RetrievalConfig,
        encoders: EncoderConfig,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self._library = library
        self._config = retrieval
        self._encoders = encoders
        self._retriever: HybridRetriever | None = None
        self._dirty = False
        self._status = on_status or (lambda message: logger.info("%s", message))

    @property
    def directory(self):
        return self._library.index_dir

    @property
    def retriever(self) -> HybridRetriever:
        """The retriever, loaded (or built) and reconciled with the stored chunks on first use."""
        if self._retriever is None:
            self._retriever = self._open()
            self._reconcile(self._retriever)
        return self._retriever

    def _open(self) -> HybridRetriever:
        parts = _parts(self._config)
        modes = [RetrievalMode(p) for p in parts]
        dense, sparse = make_encoders(modes, self._config, self._encoders)
        key = index_key(self._config, self._encoders)
        key_path = self.directory / _KEY_FILE
        stored = json.loads(key_path.read_text())["key"] if key_path.is_file() else None
        if stored == key:
            try:
                return HybridRetriever.load(
                    self.directory, dense_encoder=dense, sparse_encoder=sparse, config=self._config
                )
            except (FileNotFoundError, IndexMismatchError, ValueError, OSError) as exc:
                self._status(f"search index unusable ({exc}); rebuilding it from the stored chunks")
        elif stored is not None:
            self._status("search settings changed since the index was built; rebuilding it")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(key_path, json.dumps({"key": key, "parts": parts}))
        self._dirty = True
        return HybridRetriever.create(dense_encoder=dense, sparse_encoder=sparse, config=self._config)

    def sync(self) -> tuple[int, int]:
        """Make the index hold exactly the stored chunks; returns (added, removed)."""
        return self._reconcile(self.retriever)

    def _reconcile(self, retriever: HybridRetriever) -> tuple[int, int]:
        with self._library.sessions() as session:
            stored = set(session.scalars(select(Chunk.id)))
        indexed = set(retriever.bm25.chunk_ids())
        missing = stored - indexed
        extra = indexed - stored
        if extra:
            retriever.delete(extra)
        if missing:
            with self._library.sessions() as session:
                rows = list(session.execute(select(Chunk.id, Chunk.text).where(Chunk.id.in_(missing))))
            step = 512
            for start in range(0, len(rows), step):
                self._status(f"indexing chunks {start + 1}-{min(start + step, len(rows))} of {len(rows)}")
                retriever.add([(cid, text) for cid, text in rows[start : start + step]])
        if missing or extra:
            self._dirty = True
            self.flush()
        return len(missing), len(extra)

    # --- ChunkIndex (what ingestion calls) ---------------------------------------------------

    def add(self, chunks: Sequence[tuple[str, str]]) -> None:
        retriever = self.retriever
        # The first open reconciles with the database, which may already have added these.
        new = [(cid, text) for cid, text in chunks if cid not in retriever]
        if new:
            retriever.add(new)
            self._dirty = True

    def remove(self, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            self.retriever.delete(chunk_ids)
            self._dirty = True

    def flush(self) -> None:
        """Save the index if it changed (each part atomically, the manifest last)."""
        if self._dirty and self._retriever is not None:
            self._retriever.save(self.directory)
            self._dirty = False

    # --- search ------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        mode: RetrievalMode | str | None = None,
        doc_ids: Collection[str] | None = None,
    ) -> list[SearchHit]:
        """The best chunks for `query`, optionally within some documents.

        Raises:
            ValueError: empty query, bad k, or a mode whose index this library does not keep.
            LookupError: a doc id that matches no document.
        """
        if not query.strip():
            raise ValueError("empty query: type what you are looking for")
        allowed = self.chunk_ids_of(doc_ids) if doc_ids is not None else None
        if allowed is not None and not allowed:
            return []
        hits = self.retriever.search(query, k, mode=mode, allowed=allowed)
        return self.describe(hits)

    def chunk_ids_of(self, doc_ids: Collection[str]) -> set[str]:
        """Chunk ids of documents given by id or unique id prefix."""
        with self._library.sessions() as session:
            ids: set[str] = set()
            for prefix in doc_ids:
                docs = list(session.scalars(select(Document.id).where(Document.id.startswith(prefix))))
                if len(docs) != 1:
                    what = "no document" if not docs else f"{len(docs)} documents"
                    raise LookupError(f"{what} with id {prefix!r} (see `folio docs`)")
                ids.update(session.scalars(select(Chunk.id).where(Chunk.doc_id == docs[0])))
            return ids

    def describe(self, hits: Sequence[Hit]) -> list[SearchHit]:
        """Attach document, page and text to hits (in the same order)."""
        if not hits:
            return []
        with self._library.sessions() as session:
            rows = {
                c.id: (c, name)
                for c, name in session.execute(
                    select(Chunk, Document.file_name)
                    .join(Document, Document.id == Chunk.doc_id)
                    .where(Chunk.id.in_([h.chunk_id for h in hits]))
                    .where(Document.status == DocumentStatus.OK)
                )
            }
        out = []
        for hit in hits:
            if hit.chunk_id not in rows:
                continue  # deleted since the index was read
            chunk, name = rows[hit.chunk_id]
            out.append(
                SearchHit(
                    hit.chunk_id, chunk.doc_id, name, chunk.page_start, chunk.kind, hit.score,
                    chunk.text, tuple(chunk.block_ids),
                )
            )
        return out


def _atomic_write(path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
