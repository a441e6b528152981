"""The library's search index: a hybrid retriever kept in step with the stored chunks.

The database is the source of truth. The index lives in `<library>/index/` and records the
settings it was built with; on open it is compared with the stored chunks and repaired (chunks
missing from it are added, chunks no longer stored are removed), so a crash between the database
commit and the index save never leaves a chunk unsearchable or a hit pointing nowhere: that
reconcile is the index's journal replay. An index built with other encoder settings is rebuilt
from the stored chunks, never queried stale.

Each save is a new generation of part files made current by replacing one manifest, so a crash
mid-save leaves the previous save whole (`HybridRetriever.save`). Processes take a lock file in
the index folder around saving and around open-and-reconcile; a process that finds a newer
generation on disk before a search (another process ingested) loads it. Within a process,
searches share the index while adding, removing, saving and reloading take turns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
import zipfile
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from models.config import EncoderConfig
from pipeline.library.documents import resolve_documents
from pipeline.library.encoders import make_encoders
from pipeline.library.owners import owned_chunk_ids
from retrieval import (
    EncodedChunks,
    Hit,
    HybridRetriever,
    IndexMismatchError,
    RetrievalConfig,
    RetrievalMode,
)
from storage import Chunk, Document, DocumentStatus, FileLock, Library, document_version

logger = logging.getLogger(__name__)

_KEY_FILE = "index-key.json"
LOCK_FILE = ".lock"  # in the index folder; never removed, so every process locks one file
_MANIFEST = "retriever.json"
_STEP = 512  # chunks embedded per step of a reconcile (a progress message each)
# What a damaged or half-written index can raise on load; any of them means: rebuild it.
_UNUSABLE = (
    FileNotFoundError, IndexMismatchError, ValueError, OSError, KeyError, zipfile.BadZipFile,
)  # fmt: skip


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
        "parts": index_parts(retrieval),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def index_parts(config: RetrievalConfig) -> list[str]:
    """Which indexes the library keeps: BM25 always, dense and SPLADE when fusion uses them."""
    parts = ["bm25"]
    if config.fusion.dense_weight > 0 or config.mode == RetrievalMode.DENSE:
        parts.append("dense")
    if config.fusion.splade_weight > 0 or config.mode == RetrievalMode.SPLADE:
        parts.append("splade")
    return parts


def index_encoders(retrieval: RetrievalConfig, encoders: EncoderConfig) -> tuple:
    """The (dense, SPLADE) encoders of a library's index (None where it keeps no such part).

    `HybridRetriever.create(dense_encoder=..., sparse_encoder=..., config=retrieval)` with them
    encodes chunks exactly as `LibraryIndex.add` does, away from the index (e.g. on Ray workers;
    then `LibraryIndex.add_encoded`).
    """
    modes = [RetrievalMode(p) for p in index_parts(retrieval)]
    return make_encoders(modes, retrieval, encoders)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers. Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class LibraryIndex:
    """Search over a library's chunks; also the `ChunkIndex` that ingestion keeps in step.

    Thread-safe: `search` calls run together; `add`, `remove`, `flush`, `sync` and the first
    open take turns and hold searches off only while they change the index in memory (chunks
    are embedded before that). Search through `search` (not `retriever`) from several threads.

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
        self._generation: str | None = None  # the save the in-memory index started from
        self._manifest_seen: tuple[int, int, int] | None = None  # (inode, mtime, size)
        self._encoder_pair: tuple | None = None
        self._dirty = False
        self._last_replay = (0, 0)  # what the last open replayed from the database
        # doc_id -> version (`Document.created`) of the texts the in-memory index holds: a
        # document stored again keeps its chunk ids, so ids alone cannot tell stale texts.
        self._versions: dict[str, str] = {}
        self._status = on_status or (lambda message: logger.info("%s", message))
        self._writer = threading.RLock()  # one writer at a time in this process
        self._rw = ReadWriteLock()  # searches read; in-memory changes and swaps write
        # owner -> (the retriever, its `changes`, the chunk ids the owner may search): one
        # database read per owner while the index is unchanged, not one per query.
        self._owned: dict[str | None, tuple[weakref.ref, int, frozenset[str] | None]] = {}

    @property
    def directory(self) -> Path:
        return self._library.index_dir

    @property
    def generation(self) -> str | None:
        """The saved generation the in-memory index started from (None before the first open)."""
        return self._generation

    @property
    def retriever(self) -> HybridRetriever:
        """The retriever, loaded (or built) and reconciled with the stored chunks on first use.

        Use it from one thread at a time; `search` is the thread-safe way to query.
        """
        retriever = self._retriever
        if retriever is None:
            with self._writer:
                if self._retriever is None:
                    with self._index_lock():
                        opened = self._load_reconciled()
                    with self._rw.write():
                        self._retriever = opened
                retriever = self._retriever
        return retriever

    def sync(self) -> tuple[int, int]:
        """Make the index hold exactly the stored chunks (and save it).

        Returns:
            (added, removed): chunks replayed from the database, counting those of the first
            open when this call made it.
        """
        with self._writer:
            opened = (0, 0)
            if self._retriever is None:
                self.retriever  # noqa: B018 - opens (and reconciles)
                opened = self._last_replay
            with self._index_lock():
                added, removed, versions = self._reconcile(self._retriever, self._versions, live=True)
                if added or removed or versions != self._versions:
                    self._versions = versions
                    self._dirty = True
                if self._dirty:
                    self._save_locked()
        return added + opened[0], removed + opened[1]

    def refresh(self) -> bool:
        """Load the index another process saved since this one was read; True if it did.

        Cheap when nothing changed (one stat of the manifest). Skipped, to be tried again on
        the next call, while another thread of this process or another process writes it.
        """
        if self._retriever is None:
            return False
        try:
            st = os.stat(self.directory / _MANIFEST)
        except FileNotFoundError:
            return False
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._manifest_seen:
            return False
        if not self._writer.acquire(blocking=False):
            return False
        try:
            lock = FileLock(self.directory / LOCK_FILE)
            if not lock.acquire(blocking=False):
                return False
            try:
                if HybridRetriever.saved_generation(self.directory) == self._generation:
                    self._remember_manifest()
                    return False
                self._status("the search index changed on disk; loading it")
                self._reload_locked()
                return True
            finally:
                lock.release()
        finally:
            self._writer.release()

    def part_chunk_ids(self) -> dict[str, set[str]]:
        """The chunk ids each part of the in-memory index holds ("bm25", "dense", "splade")."""
        self.retriever  # noqa: B018 - opens (and reconciles) on first use
        with self._rw.read():
            retriever = self._retriever
            parts = {"bm25": retriever.bm25, "dense": retriever.dense, "splade": retriever.splade}
            return {name: set(part.chunk_ids()) for name, part in parts.items() if part is not None}

    # --- opening, reconciling, saving (callers hold self._writer and the index lock) -------

    @contextmanager
    def _index_lock(self) -> Iterator[None]:
        """The index folder's lock file, held alone (between processes and LibraryIndex objects)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(self.directory / LOCK_FILE):
            yield

    def _encoder_objects(self) -> tuple:
        if self._encoder_pair is None:
            self._encoder_pair = index_encoders(self._config, self._encoders)
        return self._encoder_pair

    def _load_or_create(self) -> tuple[HybridRetriever, bool]:
        """The saved retriever, or a new empty one (True) when none is usable."""
        dense, sparse = self._encoder_objects()
        key = index_key(self._config, self._encoders)
        key_path = self.directory / _KEY_FILE
        try:
            stored = json.loads(key_path.read_text())["key"] if key_path.is_file() else None
        except (ValueError, KeyError, OSError):
            stored = "unreadable"
        if stored == key:
            try:
                loaded = HybridRetriever.load(
                    self.directory, dense_encoder=dense, sparse_encoder=sparse, config=self._config
                )
                return loaded, False
            except _UNUSABLE as exc:
                self._status(f"search index unusable ({exc}); rebuilding it from the stored chunks")
        elif stored == "unreadable":
            self._status(f"search index unusable (cannot read {_KEY_FILE}); rebuilding it")
        elif stored is not None:
            self._status("search settings changed since the index was built; rebuilding it")
        _clear(self.directory)
        _atomic_write(key_path, json.dumps({"key": key, "parts": index_parts(self._config)}))
        return HybridRetriever.create(dense_encoder=dense, sparse_encoder=sparse, config=self._config), True

    def _load_reconciled(self) -> HybridRetriever:
        """Load (or build) the saved index, replay the database into it, save if that changed it."""
        retriever, created = self._load_or_create()
        generation = HybridRetriever.saved_generation(self.directory) if not created else None
        saved = {} if created else HybridRetriever.saved_meta(self.directory).get("doc_versions", {})
        added, removed, versions = self._reconcile(retriever, saved, live=False)
        self._last_replay = (added, removed)
        if created or added or removed or generation is None or versions != saved:
            generation = self._save(retriever, versions)
        self._versions = versions
        self._generation = generation
        self._dirty = False
        self._remember_manifest()
        return retriever

    def _reload_locked(self) -> None:
        """Swap in what is on disk, replayed against the database (our own unsaved changes are
        in the database too: ingestion commits before it adds)."""
        fresh = self._load_reconciled()
        with self._rw.write():
            old, self._retriever = self._retriever, fresh
        if old is not None and old is not fresh:
            old.close()

    def _reconcile(
        self, retriever: HybridRetriever, versions: dict[str, str], *, live: bool
    ) -> tuple[int, int, dict[str, str]]:
        """Add stored chunks the index lacks or holds an older version of, and drop indexed
        chunks no longer stored; returns (added, removed, the document versions now held).

        `versions`: the document versions `retriever` holds (documents it lacks are taken as
        current). `live`: the retriever is the one searches use (change it under the write lock).
        """
        with self._library.sessions() as session:
            stored = {cid: did for cid, did in session.execute(select(Chunk.id, Chunk.doc_id))}
            current = {did: document_version(created) for did, created in session.execute(select(Document.id, Document.created))}
        with self._rw.read() if live else nullcontext():
            indexed = set(retriever.bm25.chunk_ids())
        changed = {did for did, v in versions.items() if did in current and current[did] != v}
        missing = (stored.keys() - indexed) | {cid for cid, did in stored.items() if did in changed}
        extra = indexed - stored.keys()
        if extra:
            with self._rw.write() if live else nullcontext():
                retriever.delete(extra)
        if missing:
            with self._library.sessions() as session:
                rows = list(session.execute(select(Chunk.id, Chunk.text).where(Chunk.id.in_(missing))))
            for start in range(0, len(rows), _STEP):
                self._status(f"indexing chunks {start + 1}-{min(start + _STEP, len(rows))} of {len(rows)}")
                encoded = retriever.encode_chunks(rows[start : start + _STEP])
                with self._rw.write() if live else nullcontext():
                    retriever.add_encoded(encoded)  # replaces the older texts of changed documents
        if missing or extra:
            logger.info(
                "index: replayed the database: %d chunks added (%d documents changed), %d removed",
                len(missing), len(changed), len(extra),
            )  # fmt: skip
        return len(missing), len(extra), {did: current[did] for did in set(stored.values())}

    def document_versions(self) -> dict[str, str]:
        """doc_id -> version (`Document.created`) of the texts the in-memory index holds."""
        self.retriever  # noqa: B018 - opens (and reconciles) on first use
        with self._writer:
            return dict(self._versions)

    def _save(self, retriever: HybridRetriever, versions: dict[str, str]) -> str:
        """Save `retriever` (compacted first, apart from searches, then written beside them)."""
        live = retriever is self._retriever
        with self._rw.write() if live else nullcontext():
            retriever.compact()
        logger.info("index: saving %d chunks", len(retriever))
        with self._rw.read() if live else nullcontext():
            generation = retriever.save(self.directory, meta={"doc_versions": versions})
        logger.info("index: saved generation %s", generation)
        return generation

    def _save_locked(self) -> None:
        """Save the in-memory index, unless another process saved since it was read: then
        that save, replayed against the database, replaces it (and is saved)."""
        if HybridRetriever.saved_generation(self.directory) != self._generation:
            self._reload_locked()
            return
        self._generation = self._save(self._retriever, self._versions)
        self._dirty = False
        self._remember_manifest()

    def _remember_manifest(self) -> None:
        try:
            st = os.stat(self.directory / _MANIFEST)
            self._manifest_seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._manifest_seen = None

    # --- ChunkIndex (what ingestion calls) ---------------------------------------------------

    @property
    def dense_encoder(self) -> object | None:
        """The dense encoder of the index (opened on first use), None if it keeps no dense
        part: also the evidence sampler's text encoder."""
        dense = self.retriever.dense
        return dense.encoder if dense is not None else None

    def add(self, chunks: Sequence[tuple[str, str]]) -> None:
        retriever = self.retriever
        # The first open reconciles with the database, which may already have added these.
        with self._rw.read():
            new = [(cid, text) for cid, text in chunks if cid not in retriever]
        if not new:
            return
        logger.info("index: adding %d chunks", len(new))
        self.add_encoded(retriever.encode_chunks(new))  # encoding is the slow part, outside every lock

    def add_encoded(self, encoded: EncodedChunks) -> None:
        """Add chunks encoded elsewhere with this index's encoders (see `index_encoders`); ids
        already in the index are skipped, as in `add`. Their documents must be stored."""
        self.retriever  # noqa: B018 - opens (and reconciles) on first use
        with self._library.sessions() as session:
            versions = {
                did: document_version(created)
                for did, created in session.execute(
                    select(Document.id, Document.created)
                    .join(Chunk, Chunk.doc_id == Document.id)
                    .where(Chunk.id.in_(encoded.ids))
                    .distinct()
                )
            }
        with self._writer:
            current = self._retriever  # a reload may have swapped it (same encoders)
            with self._rw.write():
                current.add_encoded(encoded, only={cid for cid in encoded.ids if cid not in current})
            self._versions.update(versions)
            self._dirty = True
        logger.info("index: added %d chunks", len(encoded.ids))

    def remove(self, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            self.retriever  # noqa: B018 - opens (and reconciles) on first use
            with self._writer:
                with self._rw.write():
                    self._retriever.delete(chunk_ids)
                self._dirty = True

    def flush(self) -> None:
        """Save the index if it changed (a new generation of part files, the manifest last)."""
        with self._writer:
            if self._dirty and self._retriever is not None:
                with self._index_lock():
                    self._save_locked()

    # --- search ------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        mode: RetrievalMode | str | None = None,
        doc_ids: Collection[str] | None = None,
        owner: str | None = None,
    ) -> list[SearchHit]:
        """The best chunks for `query` among `owner`'s documents, optionally within some.

        Args:
            doc_ids: Only these documents (ids, unique id prefixes or file names); None: all of
                `owner`'s.
            owner: Whose library to search (None: the local user's; see pipeline/library/owners.py).

        Raises:
            ValueError: empty query, bad k, or a mode whose index this library does not keep.
            LookupError: a doc id that matches no document of `owner`.
        """
        if not query.strip():
            raise ValueError("empty query: type what you are looking for")
        self.refresh()
        self.retriever  # noqa: B018 - opens (and reconciles) on first use
        if doc_ids is not None:
            allowed = self.chunk_ids_of(doc_ids, owner=owner)
        else:
            allowed = self._owned_chunk_ids(owner)
        if allowed is not None and not allowed:
            return []
        with self._rw.read():
            hits = self._retriever.search(query, k, mode=mode, allowed=allowed)
        return self.describe(hits)

    def _owned_chunk_ids(self, owner: str | None) -> frozenset[str] | None:
        """`owned_chunk_ids`, read again only when the in-memory index changed (an add, a
        delete or a reload): a chunk the index does not hold needs no filter entry, and one it
        gains changes the key. A stale entry for a chunk deleted meanwhile is harmless, since
        `describe` drops hits whose chunk is gone."""
        retriever = self._retriever
        changes = retriever.changes  # read before the database, so a concurrent add re-reads
        cached = self._owned.get(owner)
        if cached is not None and cached[0]() is retriever and cached[1] == changes:
            return cached[2]
        owned = owned_chunk_ids(self._library, owner)
        ids = frozenset(owned) if owned is not None else None
        self._owned[owner] = (weakref.ref(retriever), changes, ids)
        return ids

    def chunk_ids_of(self, doc_ids: Collection[str], *, owner: str | None = None) -> set[str]:
        """Chunk ids of `owner`'s documents given by id, unique id prefix or file name (as
        `ask` takes them)."""
        docs = resolve_documents(self._library, doc_ids, owner=owner, ready_only=False)
        with self._library.sessions() as session:
            return set(session.scalars(select(Chunk.id).where(Chunk.doc_id.in_(docs))))

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


def _clear(directory: Path) -> None:
    """Empty the index folder, all but its lock file (which other processes may hold)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _atomic_write(path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
