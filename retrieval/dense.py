"""Dense retrieval: an encoder's L2-normalised vectors in FAISS, searched by inner product.

Exact (`IndexFlatIP`) below a size threshold, HNSW from there on, and IVF-PQ past a second
threshold (settings). FAISS ids are slots; chunk ids map to slots. Deleting marks a slot dead and
searches skip it (an `IDSelector`), so HNSW, which cannot remove points, supports deletes too;
dead slots are dropped by a rebuild once they are a quarter of the index.

IVF-PQ keeps 48-byte product-quantised codes in k-means cells, searches `nprobe` cells, and
re-scores the best `k * refine_factor` candidates from a compact fp16 (or 8-bit) copy of every
vector (`faiss.IndexRefine`): ~0.8 KB a vector at 384-d, against 1.5 KB in float32. It is saved
as its own file beside the `.npz` and memory-mapped on load.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

from ._io import check_generation, check_meta, part_path, read_npz, stamp, write_npz
from ._types import DenseEncoder, Hit, IndexMismatchError
from .config import DenseConfig, DenseIndexKind, RefineKind

logger = logging.getLogger(__name__)

__all__ = ["DenseIndex", "read_faiss_file"]

_MAX_DEAD_FRACTION = 0.25
_EXACT_ALLOWED = 4096  # an `allowed` set this small is scored exactly from reconstructed vectors
_FEW_QUERIES = 8  # up to this many query vectors, exact search runs BLAS on one thread
_BATCH = 65_536  # vectors moved at a time by a rebuild (bounds its extra memory)
_SAMPLE_SEED = 0  # seeds the IVF-PQ training sample, so a rebuild of the same vectors is the same
_MIN_POINTS_PER_CELL = 39  # FAISS's own floor for k-means training points per centroid


class DenseIndex:
    """Chunk embeddings in a FAISS index, with incremental add and delete."""

    FILE = "dense.npz"
    FAISS_FILE = "dense.faiss"  # the IVF-PQ kind's FAISS index, next to FILE

    def __init__(self, encoder: DenseEncoder, config: DenseConfig | None = None) -> None:
        self._encoder = encoder
        self._config = config or DenseConfig()
        self._dim = int(encoder.dim)
        if self._config.index == DenseIndexKind.IVFPQ:
            self._pq_m()  # raises now, not when the index first grows past training size
        self._ids: list[str] = []
        self._slot: dict[str, int] = {}
        self._alive = np.zeros(0, dtype=bool)
        self._n_dead = 0
        # IVF-PQ only: the trained, empty index (serialised), which rebuilds re-add vectors into
        self._trained: np.ndarray | None = None
        # A memory-mapped index's file, kept open so it can be read into memory before a change
        # (FAISS aborts the process when it is asked to write to a mapped index).
        self._mapped: BinaryIO | None = None
        self._index: faiss.Index = self._new_index(self._kind_for(0))
        self._blas_controller: ThreadpoolController | None = None

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._slot

    @property
    def config(self) -> DenseConfig:
        return self._config

    @property
    def encoder(self) -> DenseEncoder:
        return self._encoder

    @property
    def kind(self) -> DenseIndexKind:
        """The FAISS index type in use now (flat, hnsw or ivfpq)."""
        if isinstance(self._index, faiss.IndexRefine):
            return DenseIndexKind.IVFPQ
        if isinstance(self._index, faiss.IndexHNSW):
            return DenseIndexKind.HNSW
        return DenseIndexKind.FLAT

    def with_config(self, config: DenseConfig) -> DenseIndex:
        """A view on the same index with other query-time settings (nprobe, refine factor,
        efSearch), for experiments: search the view, change only the original.

        Raises:
            ValueError: If `config` changes a build-time setting.
        """
        query_time = {"hnsw_ef_search", "ivfpq_nprobe", "ivfpq_refine_factor"}
        if config.model_dump(exclude=query_time) != self._config.model_dump(exclude=query_time):
            raise ValueError(f"with_config changes only {sorted(query_time)}; rebuild for others")
        view = copy.copy(self)
        view._config = config
        return view

    @property
    def memory_mapped(self) -> bool:
        """True while the FAISS index is read from a mapped file (until the first add)."""
        return self._mapped is not None

    @property
    def ivf_lists(self) -> int | None:
        """The IVF index's number of inverted lists (None for exact and HNSW indexes)."""
        if self.kind != DenseIndexKind.IVFPQ:
            return None
        return int(faiss.extract_index_ivf(self._index).nlist)

    def index_bytes(self) -> int:
        """Bytes the FAISS index holds (its serialised size: codes, ids, centroids, graph)."""
        if self.kind == DenseIndexKind.FLAT:
            return int(self._index.ntotal) * self._dim * 4
        size = 0

        def count(chunk: bytes) -> int:
            nonlocal size
            size += len(chunk)
            return len(chunk)

        faiss.write_index(self._index, faiss.PyCallbackIOWriter(count))  # counts, keeps nothing
        return size

    def retrain(self) -> None:
        """Train the IVF-PQ quantisers again on a fresh sample and re-add every vector.

        Adds after the first training reuse its centroids and codebooks. Retrain when the
        collection has grown several times past the size it was trained at (cells get long, so
        a search at the same nprobe scans more and finds less) or when its vectors changed
        character (another encoder domain); a no-op for the other kinds.
        """
        if self.kind == DenseIndexKind.IVFPQ:
            self._rebuild(retrain=True)

    def chunk_ids(self) -> list[str]:
        """Ids of the indexed chunks, in insertion order."""
        return [c for c, ok in zip(self._ids, self._alive.tolist(), strict=True) if ok]

    def compact(self) -> None:
        """Drop deleted chunks from the FAISS index (what `save` does first)."""
        self._compact()

    def add(self, items: Iterable[tuple[str, str]], *, batch_size: int = 256) -> None:
        """Encode and index (chunk_id, text) pairs; a chunk id already present is replaced.

        Args:
            items: Pairs of chunk id (str) and text.
            batch_size: Texts per encoder call (bounds memory).
        """
        ids: list[str] = []
        texts: list[str] = []
        for chunk_id, text in items:
            if not isinstance(chunk_id, str):
                raise TypeError(
                    f"chunk ids must be str, got {type(chunk_id).__name__} {chunk_id!r}"
                )
            ids.append(chunk_id)
            texts.append(text)
            if len(ids) == batch_size:
                self.add_vectors(ids, self._encoder.encode_documents(texts))
                ids, texts = [], []
        if ids:
            self.add_vectors(ids, self._encoder.encode_documents(texts))

    def encode_documents(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Vectors of `texts` for `add_vectors`: float32 [N, D] (no change to the index)."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)  # [N, D]
        for i in range(0, len(texts), batch_size):
            out[i : i + batch_size] = self._encoder.encode_documents(
                list(texts[i : i + batch_size])
            )
        return out

    def add_vectors(self, chunk_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index pre-computed vectors.

        Args:
            chunk_ids: N ids; one already present is replaced.
            vectors: float32 [N, D], rows L2-normalised.

        Raises:
            ValueError: On a shape mismatch or duplicate ids.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(chunk_ids), self._dim):
            raise ValueError(
                f"expected vectors of shape [{len(chunk_ids)}, {self._dim}], got {vectors.shape}"
            )
        if len(set(chunk_ids)) != len(chunk_ids):
            raise ValueError("duplicate chunk ids in one add; pass each chunk once")
        if not chunk_ids:
            return
        self._mark_dead([c for c in chunk_ids if c in self._slot])
        start = len(self._ids)
        self._ids.extend(chunk_ids)
        self._slot.update((cid, start + i) for i, cid in enumerate(chunk_ids))
        self._alive = np.concatenate([self._alive, np.ones(len(chunk_ids), dtype=bool)])
        want = self._kind_for(len(self))
        if want != self.kind:
            logger.info("dense index: %d chunks, switching to %s", len(self), want.value)
            self._rebuild(extra=vectors)
        else:
            # NOTE: IVF-PQ appends with the centroids and codebooks of its first training;
            # `retrain` re-fits them when the collection has outgrown that sample.
            self._writable().add(vectors)
        self._maybe_compact()

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove chunks; unknown ids are ignored.

        Returns:
            How many chunks were removed.
        """
        removed = self._mark_dead(set(chunk_ids))
        if removed:
            self._maybe_compact()
        return removed

    def encode_query(self, query: str) -> np.ndarray:
        """Query vector: float32 [D]."""
        return self._encoder.encode_queries([query])[0]

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors: float32 [N, D], in one encoder call."""
        if not queries:
            return np.zeros((0, self._dim), dtype=np.float32)
        return self._encoder.encode_queries(list(queries))

    def search(
        self, query: str, k: int = 10, *, allowed: Collection[str] | None = None
    ) -> list[Hit]:
        """Best chunks for `query` by inner product (cosine similarity).

        Args:
            query: Query text.
            k: How many hits at most.
            allowed: If given, only these chunk ids can be returned.

        Returns:
            Up to k hits, best first.
        """
        return self.search_encoded(self.encode_query(query), k, allowed=allowed)

    def search_encoded(
        self, vector: np.ndarray, k: int = 10, *, allowed: Collection[str] | None = None
    ) -> list[Hit]:
        """Like `search`, for a query vector [D] (possibly rewritten by feedback)."""
        ids, scores = self.search_arrays(vector, k, allowed=allowed)
        return [Hit(c, s) for c, s in zip(ids, scores.tolist(), strict=True)]

    def search_arrays(
        self, vector: np.ndarray, k: int, *, allowed: Collection[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """`search_encoded` as chunk ids and a float32 score array (no Hit objects)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        empty = ([], np.zeros(0, dtype=np.float32))
        if len(self) == 0:
            return empty
        q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self._dim)  # [1, D]
        if allowed is not None:
            slots = np.asarray(
                sorted({self._slot[c] for c in allowed if c in self._slot}), dtype=np.int64
            )
            if len(slots) == 0:
                return empty
            if len(slots) <= _EXACT_ALLOWED:
                return self._score_slots(slots, q[0], k)
            mask = np.zeros(len(self._ids), dtype=bool)
            mask[slots] = True
        else:
            mask = self._alive if self._n_dead else None
        k_eff = min(k, len(self) if allowed is None else int(mask.sum()))
        scores, labels = self._search(q, k_eff, mask)
        found = labels[0] >= 0
        if allowed is not None and int(found.sum()) < k_eff:
            # NOTE: HNSW and IVF-PQ visit part of the index; restricted to a set spread thinly
            # over it they can miss members, which exact scoring of the set never does.
            return self._score_slots(np.flatnonzero(mask), q[0], k)
        return [self._ids[s] for s in labels[0][found].tolist()], scores[0][found]

    def _score_slots(
        self, slots: np.ndarray, q: np.ndarray, k: int
    ) -> tuple[list[str], np.ndarray]:
        """Exact top k of the given slots [n] for a query q [D], from the stored vectors."""
        scores = np.zeros(len(slots), dtype=np.float32)  # [n]
        with self._blas().limit(limits=1, user_api="blas"):
            for a in range(0, len(slots), _BATCH):
                vecs = self._index.reconstruct_batch(slots[a : a + _BATCH])  # [b, D]
                scores[a : a + _BATCH] = vecs @ q
        top = np.lexsort((slots, -scores))[:k]
        return [self._ids[s] for s in slots[top].tolist()], scores[top]

    def search_many(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Batched `search_encoded` for query vectors [N, D] (no `allowed` filter)."""
        if len(self) == 0:
            return [[] for _ in range(len(vectors))]
        q = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self._dim)
        scores, labels = self._search(q, min(k, len(self)), self._alive if self._n_dead else None)
        return [
            [
                Hit(self._ids[s], float(d))
                for d, s in zip(srow.tolist(), lrow.tolist(), strict=True)
                if s >= 0
            ]
            for srow, lrow in zip(scores, labels, strict=True)
        ]

    def vectors(self, chunk_ids: Sequence[str]) -> np.ndarray:
        """Stored vectors of the given chunks (unknown ids skipped): float32 [n, D].

        IVF-PQ returns its re-scoring copy (fp16 or 8-bit), not the float32 vectors added.
        """
        slots = np.asarray([self._slot[c] for c in chunk_ids if c in self._slot], dtype=np.int64)
        if len(slots) == 0:
            return np.zeros((0, self._dim), dtype=np.float32)
        return self._index.reconstruct_batch(slots)

    def save(self, directory: Path, *, generation: str | None = None) -> None:
        """Write `directory/dense.npz` (`dense.<generation>.npz` when given) atomically.

        Drops dead slots first.
        """
        self._compact()
        meta = {
            "kind": "dense",
            "encoder": self._encoder.name,
            "dim": self._dim,
            "index": self.kind.value,
        }
        arrays = {"ids": np.asarray(self._ids, dtype=str)}
        if self.kind == DenseIndexKind.IVFPQ:
            # NOTE: its own file, so a load can map it instead of reading it into memory; it is
            # named after the save's generation like the npz that records it, and written first.
            path = part_path(directory, self.FAISS_FILE, generation)
            _write_index(path, self._index)
            meta |= {"faiss_file": path.name, "faiss_bytes": path.stat().st_size}
            arrays["trained"] = self._trained
        else:
            arrays["faiss"] = faiss.serialize_index(self._index)
        write_npz(part_path(directory, self.FILE, generation), stamp(meta, generation), arrays)

    @classmethod
    def load(
        cls,
        directory: Path,
        encoder: DenseEncoder,
        config: DenseConfig | None = None,
        *,
        generation: str | None = None,
    ) -> DenseIndex:
        """Read what `save` wrote (with the same `generation`).

        Raises:
            FileNotFoundError: If there is no saved dense index in `directory`.
            IndexMismatchError: If it was built with another encoder, or belongs to another save.
        """
        path = part_path(directory, cls.FILE, generation)
        meta, arrays = read_npz(path, "dense")
        check_generation(path, meta, generation)
        check_meta(path, meta, {"encoder": encoder.name, "dim": int(encoder.dim)})
        self = cls(encoder, config)
        self._ids = arrays["ids"].tolist()
        self._slot = {cid: i for i, cid in enumerate(self._ids)}
        self._alive = np.ones(len(self._ids), dtype=bool)
        if meta.get("index") == DenseIndexKind.IVFPQ.value:
            self._trained = arrays["trained"]
            self._index, self._mapped = read_faiss_file(
                faiss_part(directory, meta, generation), self._config.mmap
            )
        else:
            self._index = faiss.deserialize_index(arrays["faiss"])
        if isinstance(self._index, faiss.IndexHNSW):
            self._index.hnsw.efSearch = self._config.hnsw_ef_search
        if self._index.ntotal != len(self._ids):
            raise ValueError(
                f"{path}: {self._index.ntotal} vectors for {len(self._ids)} ids; rebuild the index"
            )
        if self._kind_for(len(self)) != self.kind and self._config.index != DenseIndexKind.AUTO:
            self._rebuild()
        return self

    def _kind_for(self, n: int) -> DenseIndexKind:
        cfg = self._config
        trained = self._trained is not None
        # NOTE: PQ codebooks need vectors to train on; until there are enough, the index is exact.
        can_train = n >= max(self._min_train(), cfg.ivfpq_threshold)
        if cfg.index == DenseIndexKind.IVFPQ:
            return DenseIndexKind.IVFPQ if trained or can_train else DenseIndexKind.FLAT
        if cfg.index != DenseIndexKind.AUTO:
            return cfg.index
        # Half the threshold back down, so that a library hovering at it does not retrain.
        if can_train or (trained and n >= cfg.ivfpq_threshold // 2):
            return DenseIndexKind.IVFPQ
        return DenseIndexKind.HNSW if n >= cfg.hnsw_threshold else DenseIndexKind.FLAT

    def _min_train(self) -> int:
        """Fewest vectors IVF-PQ trains on: four per PQ centroid."""
        return 4 * 2**self._config.ivfpq_bits

    def _pq_m(self) -> int:
        """PQ sub-quantisers: the setting, or with index='auto' its largest divisor of D below it."""
        m = self._config.ivfpq_m
        if self._dim % m == 0:
            return m
        if self._config.index == DenseIndexKind.AUTO:
            return max(d for d in range(1, min(m, self._dim) + 1) if self._dim % d == 0)
        raise ValueError(
            f"ivfpq_m={m} does not divide the vector size {self._dim}; use a divisor of it"
        )

    def _train(self, sample: np.ndarray) -> None:
        """Fit IVF centroids, PQ codebooks and the refine quantiser on sample [n, D]."""
        cfg = self._config
        nlist = cfg.ivfpq_nlist or round(4 * math.sqrt(len(self)))
        nlist = max(1, min(nlist, len(sample) // _MIN_POINTS_PER_CELL))
        refine = "SQfp16" if cfg.ivfpq_refine == RefineKind.FP16 else "SQ8"
        spec = f"IVF{nlist},PQ{self._pq_m()}x{cfg.ivfpq_bits},Refine({refine})"
        logger.info("dense index: training %s on %d vectors", spec, len(sample))
        start = time.perf_counter()
        index = faiss.index_factory(self._dim, spec, faiss.METRIC_INNER_PRODUCT)
        # NOTE: the factory turns on polysemous training, which orders PQ codes for Hamming
        # pre-filtering that we never use; it took most of the training time (faiss 1.15.1).
        faiss.downcast_index(index.base_index).do_polysemous_training = False
        index.train(sample)
        self._trained = faiss.serialize_index(index)
        logger.info("dense index: trained in %.1f s", time.perf_counter() - start)

    def _new_index(self, kind: DenseIndexKind) -> faiss.Index:
        if kind == DenseIndexKind.IVFPQ:
            assert self._trained is not None, "train before creating an IVF-PQ index"
            return faiss.deserialize_index(self._trained)
        if kind == DenseIndexKind.HNSW:
            index = faiss.IndexHNSWFlat(self._dim, self._config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self._config.hnsw_ef_construction
            index.hnsw.efSearch = self._config.hnsw_ef_search
            return index
        return faiss.IndexFlatIP(self._dim)

    def _search(
        self, q: np.ndarray, k: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of q [N, D]; only slots where `mask` is True when a mask is given."""
        if k < 1:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        kind = self.kind
        if kind == DenseIndexKind.FLAT:
            return self._search_exact(q, k, mask)
        bitmap = selector = None
        if mask is not None:
            # NOTE: IDSelectorBitmap reads bit i of byte i // 8, least significant bit first.
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        if kind == DenseIndexKind.HNSW:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self._config.hnsw_ef_search, k)
            if selector is not None:
                params.sel = selector
        else:
            # The selector filters the PQ scan; the refine stage only re-scores what passed.
            base = faiss.SearchParametersIVF()
            base.nprobe = self._config.ivfpq_nprobe
            if selector is not None:
                base.sel = selector
            params = faiss.IndexRefineSearchParameters()
            params.k_factor = float(self._config.ivfpq_refine_factor)
            params.base_index_params = base
        scores, labels = self._index.search(q, k, params=params)
        del bitmap, selector  # kept alive until here: FAISS reads them during the search
        return scores, labels

    def _search_exact(
        self, q: np.ndarray, k: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products through BLAS on a view of the flat index's own storage.

        NOTE: the faiss-cpu wheel here loads its generic build (no AVX2), whose flat scan is
        ~2.5x slower than numpy's BLAS matrix-vector product; the view copies nothing.
        """
        n = self._index.ntotal
        xb = faiss.rev_swig_ptr(self._index.get_xb(), n * self._dim).reshape(n, self._dim)  # [S, D]
        if len(q) <= _FEW_QUERIES:
            # NOTE: a matrix-vector product gains nothing from BLAS threads, and when other
            # processes share the cores OpenBLAS's threads make it 20-40x slower (measured).
            with self._blas().limit(limits=1, user_api="blas"):
                scores = q @ xb.T  # [N, S]
        else:
            scores = q @ xb.T  # [N, S]
        if mask is not None:
            scores[:, ~mask] = -np.inf
        k = min(k, n)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [N, k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        labels = np.take_along_axis(top, order, axis=1)
        out = np.take_along_axis(top_scores, order, axis=1).astype(np.float32)
        labels[~np.isfinite(out)] = -1
        return out, labels.astype(np.int64)

    def _blas(self) -> ThreadpoolController:
        if self._blas_controller is None:
            self._blas_controller = ThreadpoolController()
        return self._blas_controller

    def _mark_dead(self, chunk_ids: Iterable[str]) -> int:
        removed = 0
        for cid in chunk_ids:
            slot = self._slot.pop(cid, None)
            if slot is not None:
                self._alive[slot] = False
                removed += 1
        self._n_dead += removed
        return removed

    def _maybe_compact(self) -> None:
        if self._n_dead > _MAX_DEAD_FRACTION * max(len(self._ids), 1):
            self._compact()

    def _compact(self) -> None:
        if self._n_dead:
            self._rebuild()

    def _writable(self) -> faiss.Index:
        """The index, read into process memory first if it is memory-mapped."""
        if self._mapped is not None:
            logger.info("dense index: reading the memory-mapped index into memory to change it")
            self._mapped.seek(0)
            self._index = faiss.read_index(faiss.PyCallbackIOReader(self._mapped.read))
            self._mapped.close()
            self._mapped = None
        return self._index

    def _rebuild(self, extra: np.ndarray | None = None, *, retrain: bool = False) -> None:
        """New FAISS index over the live slots (plus `extra` vectors for the newest slots).

        IVF-PQ trains once, on a sample of the live vectors, when it first appears (or when
        `retrain`); later rebuilds re-add into the trained, empty index.
        """
        n_old = self._index.ntotal
        live = np.flatnonzero(self._alive)

        def gather(slots: np.ndarray) -> np.ndarray:
            """float32 [len(slots), D]: old slots from the index, newer ones from `extra`."""
            out = np.empty((len(slots), self._dim), dtype=np.float32)
            old = slots < n_old
            if old.any():
                out[old] = self._index.reconstruct_batch(slots[old])
            if not old.all():
                out[~old] = extra[slots[~old] - n_old]
            return out

        kind = self._kind_for(len(live))
        if kind == DenseIndexKind.IVFPQ and (self._trained is None or retrain):
            rng = np.random.default_rng(_SAMPLE_SEED)
            size = min(self._config.ivfpq_train_size, len(live))
            self._train(gather(np.sort(rng.choice(live, size=size, replace=False))))
        elif kind != DenseIndexKind.IVFPQ:
            self._trained = None
        index = self._new_index(kind)
        for a in range(0, len(live), _BATCH):
            index.add(gather(live[a : a + _BATCH]))
        self._ids = [self._ids[s] for s in live.tolist()]
        self._slot = {cid: i for i, cid in enumerate(self._ids)}
        self._alive = np.ones(len(self._ids), dtype=bool)
        self._n_dead = 0
        self._index = index
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None


def faiss_part(directory: Path, meta: dict, generation: str | None) -> Path:
    """The FAISS file a saved IVF-PQ dense part names, checked against the npz that names it.

    Raises:
        FileNotFoundError: If the file is missing.
        IndexMismatchError: If it is not the save's (other name or size: a torn index).
    """
    path = part_path(directory, DenseIndex.FAISS_FILE, generation)
    if meta.get("faiss_file") != path.name:
        raise IndexMismatchError(
            f"{directory}: the dense part names {meta.get('faiss_file')!r}, not {path.name!r}; "
            "rebuild the index"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no FAISS index file at {path}")
    if path.stat().st_size != meta.get("faiss_bytes"):
        raise IndexMismatchError(
            f"{path} holds {path.stat().st_size} bytes, its save wrote {meta.get('faiss_bytes')}: "
            "the index is torn; rebuild it"
        )
    return path


def _write_index(path: Path, index: faiss.Index) -> None:
    """`faiss.write_index` to `path` atomically (temp file, fsync, os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_faiss_file(path: Path, mmap: bool) -> tuple[faiss.Index, BinaryIO | None]:
    """Read a FAISS file, memory-mapped (with its open file) or into memory (and None).

    NOTE: IO_FLAG_MMAP_IFC maps every array (inverted lists, codes, centroids); IO_FLAG_MMAP
    maps the inverted lists only and reads the refine codes, the bulk, into memory (measured
    with faiss 1.15.1).

    Raises:
        IndexMismatchError: If FAISS cannot read the file.
    """
    handle = path.open("rb") if mmap else None
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError as exc:
        if handle is not None:
            handle.close()
        raise IndexMismatchError(
            f"{path}: FAISS cannot read it ({exc}); rebuild the index"
        ) from exc
    return index, handle
