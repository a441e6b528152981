"""The composed retriever: BM25, SPLADE and dense runs, interpolated before and after feedback.

`hybrid-prf` follows Li et al., "To Interpolate or not to Interpolate: PRF, Dense and Sparse
Retrievers" (SIGIR 2022): interpolate the first runs, take the top chunks of the fused run as
feedback for every retriever (RM3 for BM25, Rocchio for SPLADE and dense), run each rewritten
query, and interpolate again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._io import FORMAT_VERSION, part_path, read_npz
from ._postings import TermWeights
from ._types import DenseEncoder, Hit, IndexMismatchError, SparseEncoder
from .config import RetrievalConfig, RetrievalMode
from .dense import DenseIndex, faiss_part
from .fusion import Run, fuse_with_feedback
from .prf import rm3, rocchio_dense, rocchio_sparse
from .sparse import BM25Index, SpladeIndex

logger = logging.getLogger(__name__)

__all__ = ["EncodedChunks", "EncodedQuery", "HybridRetriever", "SavedIndex", "inspect_saved"]

_MANIFEST = "retriever.json"
_PART_FILES = {"bm25": BM25Index.FILE, "splade": SpladeIndex.FILE, "dense": DenseIndex.FILE}
# Files a part may write beside its npz (the IVF-PQ dense part's FAISS index).
_EXTRA_FILES = {"dense": (DenseIndex.FAISS_FILE,)}


@dataclass(frozen=True)
class EncodedQuery:
    """A query as each retriever sees it (None where a retriever is absent or not needed)."""

    text: str
    bm25: TermWeights | None = None
    splade: TermWeights | None = None
    dense: np.ndarray | None = None  # [D]


@dataclass(frozen=True)
class EncodedChunks:
    """Chunks as each retriever indexes them, computed without touching the indexes."""

    ids: list[str]
    bm25: list[list[str]]  # analysed terms of each chunk
    splade: sp.csr_matrix | None = None  # [N, V]
    dense: np.ndarray | None = None  # [N, D]


class HybridRetriever:
    """BM25 always; SPLADE and dense when their encoders are given. Chunks are (id, text) pairs."""

    def __init__(
        self,
        *,
        bm25: BM25Index,
        splade: SpladeIndex | None = None,
        dense: DenseIndex | None = None,
        config: RetrievalConfig | None = None,
    ) -> None:
        self._config = config or RetrievalConfig()
        self._bm25 = bm25
        self._splade = splade
        self._dense = dense
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # Bumped by every add and delete, so callers can cache what they derive from the chunk
        # set (the search service's per-user filter) and know when it went stale.
        self.changes = 0

    @classmethod
    def create(
        cls,
        *,
        dense_encoder: DenseEncoder | None = None,
        sparse_encoder: SparseEncoder | None = None,
        config: RetrievalConfig | None = None,
    ) -> HybridRetriever:
        """An empty retriever.

        Args:
            dense_encoder: Enables the dense run (e.g. `models.encoders.MiniLMEncoder`).
            sparse_encoder: Enables the SPLADE run (e.g. `models.encoders.SpladeEncoder`).
            config: Settings (defaults when None).
        """
        config = config or RetrievalConfig()
        return cls(
            bm25=BM25Index(config.bm25),
            splade=SpladeIndex(sparse_encoder, config.splade)
            if sparse_encoder is not None
            else None,
            dense=DenseIndex(dense_encoder, config.dense) if dense_encoder is not None else None,
            config=config,
        )

    @property
    def config(self) -> RetrievalConfig:
        return self._config

    @property
    def bm25(self) -> BM25Index:
        return self._bm25

    @property
    def splade(self) -> SpladeIndex | None:
        return self._splade

    @property
    def dense(self) -> DenseIndex | None:
        return self._dense

    @property
    def modes(self) -> list[RetrievalMode]:
        """Modes this retriever can answer."""
        modes = [RetrievalMode.BM25]
        if self._splade is not None:
            modes.append(RetrievalMode.SPLADE)
        if self._dense is not None:
            modes.append(RetrievalMode.DENSE)
        return [*modes, RetrievalMode.HYBRID, RetrievalMode.HYBRID_PRF]

    def with_config(self, config: RetrievalConfig) -> HybridRetriever:
        """The same indexes with other query-time settings (fusion, feedback, depth, BM25 k1/b).

        Raises:
            ValueError: If `config` changes a build-time setting (analyser, SPLADE pruning, FAISS).
        """
        old = self._config
        if (config.bm25.stemmer, config.bm25.stopwords) != (
            old.bm25.stemmer,
            old.bm25.stopwords,
        ) or (config.splade.doc_max_terms != old.splade.doc_max_terms or config.dense != old.dense):
            raise ValueError(
                "with_config changes query-time settings only; rebuild for index settings"
            )
        bm25 = self._bm25.with_config(config.bm25)
        splade = self._splade.with_config(config.splade) if self._splade is not None else None
        return HybridRetriever(bm25=bm25, splade=splade, dense=self._dense, config=config)

    def __len__(self) -> int:
        return len(self._bm25)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._bm25

    def add(self, items: Iterable[tuple[str, str]]) -> None:
        """Index (chunk_id, text) pairs in every retriever; an id already present is replaced.

        Args:
            items: Pairs of chunk id (str) and text.
        """
        self.add_encoded(self.encode_chunks(items))

    def encode_chunks(self, items: Iterable[tuple[str, str]]) -> EncodedChunks:
        """The slow half of `add` (analysis and the encoders), which leaves the indexes alone,
        so a caller can run it outside its lock and then call `add_encoded`.

        Args:
            items: Pairs of chunk id (str) and text.
        """
        items = list(items)
        for chunk_id, _ in items:
            if not isinstance(chunk_id, str):
                raise TypeError(
                    f"chunk ids must be str, got {type(chunk_id).__name__} {chunk_id!r}"
                )
        ids = [cid for cid, _ in items]
        texts = [text for _, text in items]
        return EncodedChunks(
            ids=ids,
            bm25=self._bm25.analyze(texts),
            splade=self._splade.encode_documents(texts) if self._splade is not None else None,
            dense=self._dense.encode_documents(texts) if self._dense is not None else None,
        )

    def add_encoded(self, chunks: EncodedChunks, only: Collection[str] | None = None) -> None:
        """Index chunks from `encode_chunks` (of this retriever or one with the same encoders).

        Args:
            chunks: The encoded chunks; an id already present is replaced.
            only: If given, only the chunks with these ids.
        """
        rows = [i for i, cid in enumerate(chunks.ids) if only is None or cid in only]
        if not rows:
            return
        ids = [chunks.ids[i] for i in rows]
        self._bm25.add_analyzed(ids, [chunks.bm25[i] for i in rows])
        if self._splade is not None:
            if chunks.splade is None:
                raise ValueError("the chunks were encoded without SPLADE; encode them here")
            self._splade.add_rows(ids, chunks.splade[rows])
        if self._dense is not None:
            if chunks.dense is None:
                raise ValueError(
                    "the chunks were encoded without the dense model; encode them here"
                )
            self._dense.add_vectors(ids, chunks.dense[rows])
        self.changes += 1

    def compact(self) -> None:
        """Drop deleted chunks and merge segments in every part; after it, `save` changes
        nothing in memory (so it can run while searches do)."""
        for index in (self._bm25, self._splade, self._dense):
            if index is not None:
                index.compact()

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove chunks from every retriever; unknown ids are ignored.

        Returns:
            How many chunks were removed.
        """
        ids = set(chunk_ids)
        removed = self._bm25.delete(ids)
        for index in (self._splade, self._dense):
            if index is not None:
                index.delete(ids)
        self.changes += 1
        return removed

    def encode(self, query: str, mode: RetrievalMode | str | None = None) -> EncodedQuery:
        """Encode `query` for every retriever that `mode` uses."""
        return self.encode_batch([query], mode)[0]

    def encode_batch(
        self, queries: Sequence[str], mode: RetrievalMode | str | None = None
    ) -> list[EncodedQuery]:
        """Encode queries in batches (one encoder call per retriever)."""
        use = self._uses(self._mode(mode))
        n = len(queries)
        pending = None
        if "splade" in use and "dense" in use and self._config.parallel_encoding:
            # NOTE: torch releases the GIL inside ops, so the two encoders overlap on two cores.
            pending = self._executor().submit(self._splade.encode_queries, queries)
        bm25 = self._bm25.encode_queries(queries) if "bm25" in use else [None] * n
        dense = list(self._dense.encode_queries(queries)) if "dense" in use else [None] * n
        if pending is not None:
            splade = pending.result()
        else:
            splade = self._splade.encode_queries(queries) if "splade" in use else [None] * n
        return [
            EncodedQuery(q, b, s, d)
            for q, b, s, d in zip(queries, bm25, splade, dense, strict=True)
        ]

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: RetrievalMode | str | None = None,
        allowed: Collection[str] | None = None,
    ) -> list[Hit]:
        """Best chunks for `query`.

        Args:
            query: Query text.
            k: How many hits at most.
            mode: bm25, splade, dense, hybrid or hybrid-prf (default: the configured mode).
            allowed: If given, only these chunk ids can be returned (e.g. one document's chunks).

        Returns:
            Up to k hits, best first. Scores of fused modes are interpolated normalised scores.

        Raises:
            ValueError: If the mode needs a retriever this one lacks.
        """
        mode = self._mode(mode)
        return self.search_encoded(self.encode(query, mode), k, mode=mode, allowed=allowed)

    def search_encoded(
        self,
        query: EncodedQuery,
        k: int = 10,
        *,
        mode: RetrievalMode | str | None = None,
        allowed: Collection[str] | None = None,
    ) -> list[Hit]:
        """Like `search`, for a query from `encode` (with the same mode)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        mode = self._mode(mode)
        allowed = (
            set(allowed)
            if allowed is not None and not isinstance(allowed, set | frozenset)
            else allowed
        )
        if mode == RetrievalMode.BM25:
            return self._bm25.search_encoded(self._need(query.bm25, "bm25"), k, allowed=allowed)
        if mode == RetrievalMode.SPLADE:
            return self._splade.search_encoded(
                self._need(query.splade, "splade"), k, allowed=allowed
            )
        if mode == RetrievalMode.DENSE:
            return self._dense.search_encoded(self._need(query.dense, "dense"), k, allowed=allowed)
        return fuse_with_feedback(
            query, lambda q, depth: self._runs(q, depth, allowed), self._feedback, self._config, k,
            prf=mode == RetrievalMode.HYBRID_PRF,
        )  # fmt: skip

    def save(self, directory: Path, *, meta: dict | None = None) -> str:
        """Write every index into `directory`, then `retriever.json` (atomically, last).

        Each save writes its parts under new names stamped with a fresh generation, and only
        then replaces the manifest that names them: a crash at any point leaves the previous
        save whole. Files of earlier (or unfinished) saves are removed after. One writer at a
        time per directory (`pipeline.library.search.LibraryIndex` locks).

        Args:
            directory: The index folder.
            meta: JSON-able facts the caller keeps with this save (read back by `saved_meta`).

        Returns:
            The generation of this save (recorded in the manifest and in every part).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        generation = secrets.token_hex(6)
        parts = {"bm25": self._bm25}
        if self._splade is not None:
            parts["splade"] = self._splade
        if self._dense is not None:
            parts["dense"] = self._dense
        for index in parts.values():
            index.save(directory, generation=generation)
        ids = self._bm25.chunk_ids()
        manifest = {
            "format": FORMAT_VERSION,
            "generation": generation,
            "chunks": len(ids),
            "ids_sha256": _ids_digest(ids),
            "parts": sorted(parts),
            "meta": meta or {},
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{_MANIFEST}.", suffix=".tmp", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / _MANIFEST)
        _fsync_dir(directory)
        for path in stray_files(directory):
            path.unlink(missing_ok=True)
        return generation

    @staticmethod
    def saved_generation(directory: Path) -> str | None:
        """The generation of the save in `directory` (None: none, or saved before stamping)."""
        try:
            return json.loads((Path(directory) / _MANIFEST).read_text(encoding="utf-8")).get(
                "generation"
            )
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @staticmethod
    def saved_meta(directory: Path) -> dict:
        """The `meta` given to the save in `directory` (empty: none, or no save)."""
        try:
            return json.loads((Path(directory) / _MANIFEST).read_text(encoding="utf-8")).get(
                "meta", {}
            )
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        dense_encoder: DenseEncoder | None = None,
        sparse_encoder: SparseEncoder | None = None,
        config: RetrievalConfig | None = None,
    ) -> HybridRetriever:
        """Read what `save` wrote; the encoders must be the ones the indexes were built with.

        Raises:
            FileNotFoundError: If `directory` holds no saved retriever.
            IndexMismatchError: If an encoder is given whose index was not saved, an index was
                built with other settings, or the parts are not of one save (other generation,
                other chunks, or chunks other than the manifest's).
        """
        directory = Path(directory)
        manifest = _read_manifest(directory)
        generation = manifest.get("generation")
        config = config or RetrievalConfig()
        for name, enc in (("splade", sparse_encoder), ("dense", dense_encoder)):
            if enc is not None and name not in manifest["parts"]:
                raise IndexMismatchError(
                    f"{directory} has no {name} index; rebuild it with that encoder"
                )
        bm25 = BM25Index.load(directory, config.bm25, generation=generation)
        splade = (
            SpladeIndex.load(directory, sparse_encoder, config.splade, generation=generation)
            if sparse_encoder is not None
            else None
        )
        dense = (
            DenseIndex.load(directory, dense_encoder, config.dense, generation=generation)
            if dense_encoder is not None
            else None
        )
        ids = bm25.chunk_ids()
        _check_parts(
            directory,
            manifest,
            {"bm25": ids}
            | ({"splade": splade.chunk_ids()} if splade is not None else {})
            | ({"dense": dense.chunk_ids()} if dense is not None else {}),
        )
        return cls(bm25=bm25, splade=splade, dense=dense, config=config)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="folio-encode")
            return self._pool

    def close(self) -> None:
        """Stop the encoding thread (if one was started); the retriever stays usable."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _mode(self, mode: RetrievalMode | str | None) -> RetrievalMode:
        if mode is None:
            mode = self._config.mode
        try:
            mode = RetrievalMode(mode)
        except ValueError as exc:
            raise ValueError(
                f"unknown mode {mode!r}; use one of {[m.value for m in RetrievalMode]}"
            ) from exc
        if mode not in self.modes:
            need = (
                "a sparse (SPLADE) encoder" if mode == RetrievalMode.SPLADE else "a dense encoder"
            )
            raise ValueError(
                f"mode {mode.value!r} needs {need}; this retriever has modes {[m.value for m in self.modes]}"
            )
        return mode

    def _uses(self, mode: RetrievalMode) -> set[str]:
        if mode in (RetrievalMode.BM25, RetrievalMode.SPLADE, RetrievalMode.DENSE):
            return {mode.value}
        present = (
            {"bm25"}
            | ({"splade"} if self._splade else set())
            | ({"dense"} if self._dense else set())
        )
        return {name for name in present if self._config.weight(name) > 0}

    @staticmethod
    def _need(value, name: str):
        if value is None:
            raise ValueError(f"the query was not encoded for {name}; encode it with the same mode")
        return value

    def _runs(
        self, query: EncodedQuery, depth: int, allowed: Collection[str] | None
    ) -> dict[str, Run]:
        """One run per retriever with a positive weight and an encoded query."""
        runs: dict[str, Run] = {}
        if query.bm25 is not None and self._config.weight("bm25") > 0:
            runs["bm25"] = self._bm25.search_arrays(query.bm25, depth, allowed=allowed)
        if query.splade is not None and self._splade is not None and self._config.weight("splade") > 0:
            runs["splade"] = self._splade.search_arrays(query.splade, depth, allowed=allowed)
        if query.dense is not None and self._dense is not None and self._config.weight("dense") > 0:
            runs["dense"] = self._dense.search_arrays(query.dense, depth, allowed=allowed)
        return runs

    def _feedback(self, query: EncodedQuery, chunk_ids: Sequence[str]) -> EncodedQuery:
        """The query rewritten by each retriever from the feedback chunks."""
        p = self._config.prf
        bm25 = splade = dense = None
        if query.bm25 is not None:
            bm25 = rm3(
                query.bm25,
                self._bm25.rows(chunk_ids),
                n_terms=p.rm3_terms,
                original_weight=p.rm3_original_weight,
            )
        if query.splade is not None and self._splade is not None:
            splade = rocchio_sparse(
                query.splade,
                self._splade.rows(chunk_ids),
                alpha=p.rocchio_alpha,
                beta=p.rocchio_beta,
                n_terms=p.splade_terms,
            )
        if query.dense is not None and self._dense is not None:
            dense = rocchio_dense(
                query.dense,
                self._dense.vectors(chunk_ids),
                alpha=p.rocchio_alpha,
                beta=p.rocchio_beta,
            )
        return EncodedQuery(query.text, bm25, splade, dense)


@dataclass(frozen=True)
class SavedIndex:
    """What `inspect_saved` found in an index folder."""

    generation: str | None
    parts: dict[str, set[str]] = field(default_factory=dict)  # part name -> chunk ids
    meta: dict = field(default_factory=dict)  # what the saver kept with the save
    problems: list[str] = field(default_factory=list)  # the save is torn or unreadable
    stray: list[Path] = field(default_factory=list)  # files of no save, removed by the next

    @property
    def chunk_ids(self) -> set[str]:
        """The chunk ids the save holds (those of BM25, which every save has)."""
        return self.parts.get("bm25", set())


def inspect_saved(directory: Path) -> SavedIndex:
    """Check a saved retriever without loading any encoder: every part of the manifest is
    there, of the manifest's generation, and holds the manifest's chunks.

    Raises:
        FileNotFoundError: If `directory` holds no saved retriever.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    generation = manifest.get("generation")
    parts: dict[str, list[str]] = {}
    problems: list[str] = []
    for name in manifest.get("parts", []):
        path = part_path(directory, _PART_FILES[name], generation)
        try:
            meta, arrays = read_npz(path, name)
        except (FileNotFoundError, IndexMismatchError, ValueError, OSError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        if meta.get("generation") != generation:
            problems.append(
                f"{path.name} belongs to save {meta.get('generation')!r}, the manifest to {generation!r}"
            )
        ids = arrays["ids"].tolist()
        if name == "dense" and len(set(ids)) != len(ids):
            problems.append(f"{path.name} holds a chunk id twice")
        if name == "dense" and "faiss_file" in meta:
            try:
                faiss_part(directory, meta, generation)
            except (FileNotFoundError, IndexMismatchError) as exc:
                problems.append(f"dense: {exc}")
        parts[name] = ids
    if not problems:
        try:
            _check_parts(directory, manifest, parts)
        except IndexMismatchError as exc:
            problems.append(str(exc))
    return SavedIndex(
        generation,
        {name: set(ids) for name, ids in parts.items()},
        manifest.get("meta", {}),
        problems,
        stray_files(directory),
    )


def stray_files(directory: Path) -> list[Path]:
    """Index files that the manifest does not name: earlier saves, and unfinished ones."""
    directory = Path(directory)
    try:
        manifest = _read_manifest(directory)
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    generation = manifest.get("generation")
    files = {name: (_PART_FILES[name], *_EXTRA_FILES.get(name, ())) for name in _PART_FILES}
    keep = {
        part_path(directory, file, generation).name
        for name in manifest["parts"]
        for file in files[name]
    }
    kinds = {f.rpartition(".")[::2] for fs in files.values() for f in fs}  # (stem, suffix)
    out = []
    for path in directory.iterdir():
        name = path.name
        ours = any(name.startswith(f"{stem}.") and name.endswith(f".{suf}") for stem, suf in kinds)
        unfinished = name.startswith(".") and name.endswith(".tmp")
        if (ours and name not in keep) or unfinished:
            out.append(path)
    return sorted(out)


def _read_manifest(directory: Path) -> dict:
    path = directory / _MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no saved retriever in {directory} ({_MANIFEST} missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_parts(directory: Path, manifest: dict, parts: dict[str, Sequence[str]]) -> None:
    """Raise IndexMismatchError unless every part holds the same chunks as the manifest."""
    bm25 = set(parts["bm25"])
    for name, ids in parts.items():
        if name != "bm25" and set(ids) != bm25:
            raise IndexMismatchError(
                f"{directory}: {name} holds {len(ids)} chunks, bm25 {len(bm25)}, not the same "
                "ones; rebuild the index"
            )
    if "chunks" in manifest and manifest["chunks"] != len(bm25):
        raise IndexMismatchError(
            f"{directory}: the manifest lists {manifest['chunks']} chunks, bm25 holds {len(bm25)}; "
            "rebuild the index"
        )
    if "ids_sha256" in manifest and manifest["ids_sha256"] != _ids_digest(parts["bm25"]):
        raise IndexMismatchError(
            f"{directory}: the parts hold other chunks than the manifest; rebuild the index"
        )


def _ids_digest(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make the renames in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
