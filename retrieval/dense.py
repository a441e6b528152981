"""Dense retrieval: an encoder's L2-normalised vectors in FAISS, searched by inner product.

Exact (`IndexFlatIP`) below a size threshold, HNSW from there on (a setting). FAISS ids are
slots; chunk ids map to slots. Deleting marks a slot dead and searches skip it (an `IDSelector`),
so HNSW, which cannot remove points, supports deletes too; dead slots are dropped by a rebuild
once they are a quarter of the index.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

from ._io import check_generation, check_meta, part_path, read_npz, stamp, write_npz
from ._types import DenseEncoder, Hit
from .config import DenseConfig, DenseIndexKind

logger = logging.getLogger(__name__)

__all__ = ["DenseIndex"]

_MAX_DEAD_FRACTION = 0.25
_EXACT_ALLOWED = 4096  # an `allowed` set this small is scored exactly from reconstructed vectors
_FEW_QUERIES = 8  # up to this many query vectors, exact search runs BLAS on one thread


class DenseIndex:
    """Chunk embeddings in a FAISS index, with incremental add and delete."""

    FILE = "dense.npz"

    def __init__(self, encoder: DenseEncoder, config: DenseConfig | None = None) -> None:
        self._encoder = encoder
        self._config = config or DenseConfig()
        self._dim = int(encoder.dim)
        self._ids: list[str] = []
        self._slot: dict[str, int] = {}
        self._alive = np.zeros(0, dtype=bool)
        self._n_dead = 0
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
        """The FAISS index type in use now (flat or hnsw)."""
        return (
            DenseIndexKind.HNSW if isinstance(self._index, faiss.IndexHNSW) else DenseIndexKind.FLAT
        )

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
            self._index.add(vectors)
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
                vecs = self._index.reconstruct_batch(slots)  # [n, D]
                with self._blas().limit(limits=1, user_api="blas"):
                    scores = vecs @ q[0]  # [n]
                top = np.lexsort((slots, -scores))[:k]
                return [self._ids[s] for s in slots[top].tolist()], scores[top].astype(np.float32)
            mask = np.zeros(len(self._ids), dtype=bool)
            mask[slots] = True
        else:
            mask = self._alive if self._n_dead else None
        k_eff = min(k, len(self) if allowed is None else int(mask.sum()))
        scores, labels = self._search(q, k_eff, mask)
        found = labels[0] >= 0
        return [self._ids[s] for s in labels[0][found].tolist()], scores[0][found]

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
        """Stored vectors of the given chunks (unknown ids skipped): float32 [n, D]."""
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
        arrays = {
            "ids": np.asarray(self._ids, dtype=str),
            "faiss": faiss.serialize_index(self._index),
        }
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
        if self._config.index != DenseIndexKind.AUTO:
            return self._config.index
        return DenseIndexKind.HNSW if n >= self._config.hnsw_threshold else DenseIndexKind.FLAT

    def _new_index(self, kind: DenseIndexKind) -> faiss.Index:
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
        is_hnsw = isinstance(self._index, faiss.IndexHNSW)
        if not is_hnsw:
            return self._search_exact(q, k, mask)
        params = faiss.SearchParametersHNSW() if is_hnsw else faiss.SearchParameters()
        if is_hnsw:
            params.efSearch = max(self._config.hnsw_ef_search, k)
        bitmap = None
        if mask is not None:
            # NOTE: IDSelectorBitmap reads bit i of byte i // 8, least significant bit first.
            bitmap = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
        scores, labels = self._index.search(q, k, params=params)
        del bitmap  # kept alive until here: FAISS reads it during the search
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

    def _rebuild(self, extra: np.ndarray | None = None) -> None:
        """New FAISS index over the live slots (plus `extra` vectors for the newest slots)."""
        n_old = self._index.ntotal
        old = self._index.reconstruct_n(0, n_old) if n_old else np.zeros((0, self._dim), np.float32)
        allv = old if extra is None else np.concatenate([old, extra])  # [n_slots, D]
        live = np.flatnonzero(self._alive)
        self._ids = [self._ids[s] for s in live.tolist()]
        self._slot = {cid: i for i, cid in enumerate(self._ids)}
        self._alive = np.ones(len(self._ids), dtype=bool)
        self._n_dead = 0
        self._index = self._new_index(self._kind_for(len(self._ids)))
        if len(live):
            self._index.add(np.ascontiguousarray(allv[live]))
