"""Sharded retrieval: chunks split over S shards, each a BM25 and a dense index, searched together.

A chunk lives on the shard its id hashes to. A search asks every shard for its best `depth`
chunks of each run (BM25 and dense, in one call) and merges the per-shard lists into one top
`depth` per run. BM25 scores with the whole collection's statistics (documents, total length and
the query terms' document frequencies, summed over the shards by the coordinator), so a shard
gives each chunk the score the unsharded index would and the merged top k equals its top k. The
fused modes then fuse the merged runs exactly as `HybridRetriever` does (`fusion.fuse_with_feedback`,
and `prf.rm3` / `prf.rocchio_dense` for hybrid-prf), so with exact dense shards the sharded
hybrid equals the unsharded one.

Shards run on threads of this process, or on Ray actors (`ShardBackend.RAY`; `ray` is imported
only then, and started with its defaults unless the caller started it). Not saved: a sharded
library is rebuilt from its chunks.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._postings import TermWeights
from ._text import Analyzer
from ._types import DenseEncoder, Hit
from .config import RetrievalConfig, RetrievalMode, ShardBackend, ShardingConfig
from .dense import DenseIndex
from .fusion import Run, fuse_with_feedback
from .prf import rm3, rocchio_dense
from .sparse import BM25Index, BM25Stats

logger = logging.getLogger(__name__)

__all__ = ["ShardQuery", "ShardedRetriever"]

_MODES = (RetrievalMode.BM25, RetrievalMode.DENSE, RetrievalMode.HYBRID, RetrievalMode.HYBRID_PRF)


@dataclass(frozen=True)
class ShardQuery:
    """A query as the shards see it: analysed terms with weights, and the dense vector."""

    text: str
    terms: dict[str, float] | None = None  # analysed term -> weight (counts, or RM3's weights)
    dense: np.ndarray | None = None  # [D]


class _VectorsOnly:
    """The encoder of a shard's dense index: name and size only, since the coordinator encodes."""

    def __init__(self, name: str, dim: int) -> None:
        self._name = name
        self._dim = dim

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        raise TypeError("a shard indexes vectors encoded by its coordinator; encode there")

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        raise TypeError("a shard indexes vectors encoded by its coordinator; encode there")


class _Shard:
    """One shard: a BM25 index, and a dense index when the retriever has a dense encoder.

    NOTE: a top-level class taking and returning plain data, so that Ray can run it as an actor.
    """

    def __init__(self, config: RetrievalConfig, dense: tuple[str, int] | None) -> None:
        self._bm25 = BM25Index(config.bm25)
        self._dense = DenseIndex(_VectorsOnly(*dense), config.dense) if dense else None

    def size(self) -> int:
        return len(self._bm25)

    def chunk_ids(self) -> list[str]:
        return self._bm25.chunk_ids()

    def add(self, ids: list[str], terms: list[list[str]], vectors: np.ndarray | None) -> None:
        """Index analysed chunks (and their vectors [N, D]); an id already present is replaced."""
        self._bm25.add_analyzed(ids, terms)
        if self._dense is not None:
            if vectors is None:
                raise ValueError("this sharded retriever is dense too; pass the chunk vectors")
            self._dense.add_vectors(ids, vectors)

    def delete(self, ids: list[str]) -> int:
        removed = self._bm25.delete(ids)
        if self._dense is not None:
            self._dense.delete(ids)
        return removed

    def compact(self) -> None:
        self._bm25.compact()
        if self._dense is not None:
            self._dense.compact()

    def statistics(self, terms: list[str]) -> BM25Stats:
        return self._bm25.statistics(terms)

    def dense_info(self) -> dict[str, Any]:
        """The dense index's kind and bytes (for benchmarks)."""
        if self._dense is None:
            return {}
        return {"kind": self._dense.kind.value, "bytes": self._dense.index_bytes()}

    def search(
        self,
        terms: dict[str, float] | None,
        stats: BM25Stats | None,
        vector: np.ndarray | None,
        k: int,
        allowed: list[str] | None,
    ) -> dict[str, Run]:
        """This shard's top k of each run asked for: {"bm25": run, "dense": run}."""
        runs: dict[str, Run] = {}
        if terms is not None:
            query = self._bm25.encode_terms(terms)
            runs["bm25"] = self._bm25.search_arrays(query, k, allowed=allowed, stats=stats)
        if vector is not None and self._dense is not None:
            runs["dense"] = self._dense.search_arrays(vector, k, allowed=allowed)
        return runs

    def feedback(self, ids: list[str]) -> tuple[list[dict[str, float]], np.ndarray | None]:
        """Term frequencies and vectors [n, D] of the given chunks (those this shard holds)."""
        rows = [self._bm25.term_weights(r) for r in self._bm25.rows(ids)]
        return rows, self._dense.vectors(ids) if self._dense is not None else None


class ShardedRetriever:
    """BM25 and dense over S shards; search merges the shards' top k (global BM25 statistics).

    Mutations and searches must not overlap (callers lock, as for `HybridRetriever`).
    """

    def __init__(
        self,
        *,
        dense_encoder: DenseEncoder | None = None,
        config: RetrievalConfig | None = None,
        sharding: ShardingConfig | None = None,
    ) -> None:
        """Start S empty shards.

        Args:
            dense_encoder: Enables the dense run; queries and chunks are encoded here.
            config: Retrieval settings (BM25, dense index, fusion, feedback), for every shard.
            sharding: Number of shards and where they run.
        """
        self._config = config or RetrievalConfig()
        self._sharding = sharding or ShardingConfig()
        self._encoder = dense_encoder
        self._analyzer = Analyzer(self._config.bm25.stemmer, self._config.bm25.stopwords)
        self._stats: BM25Stats | None = None  # global N, length and the df of terms seen so far
        dense = (dense_encoder.name, int(dense_encoder.dim)) if dense_encoder else None
        n = self._sharding.shards
        self._pool: ThreadPoolExecutor | None = None
        if self._sharding.backend == ShardBackend.RAY:
            import ray  # NOTE: imported here only; the threads backend runs without Ray

            actor = ray.remote(num_cpus=self._sharding.ray_cpus)(_Shard)
            self._shards = [actor.remote(self._config, dense) for _ in range(n)]
        else:
            self._shards = [_Shard(self._config, dense) for _ in range(n)]
            self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="folio-shard")

    @property
    def config(self) -> RetrievalConfig:
        return self._config

    @property
    def shards(self) -> int:
        return len(self._shards)

    def __len__(self) -> int:
        return sum(self._call("size"))

    def chunk_ids(self) -> list[str]:
        """Ids of the indexed chunks, shard by shard."""
        return [cid for ids in self._call("chunk_ids") for cid in ids]

    def shard_of(self, chunk_id: str) -> int:
        """The shard a chunk lives on (a stable hash of its id)."""
        digest = hashlib.blake2b(chunk_id.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "little") % len(self._shards)

    def dense_info(self) -> list[dict[str, Any]]:
        """Per shard, the dense index's kind and bytes."""
        return self._call("dense_info")

    def add(self, items: Iterable[tuple[str, str]], vectors: np.ndarray | None = None) -> None:
        """Index (chunk_id, text) pairs; an id already present is replaced.

        Args:
            items: Pairs of chunk id (str) and text.
            vectors: float32 [N, D] chunk vectors, already encoded; None to encode the texts
                with the dense encoder (when there is one).
        """
        items = list(items)
        ids = [cid for cid, _ in items]
        for cid in ids:
            if not isinstance(cid, str):
                raise TypeError(f"chunk ids must be str, got {type(cid).__name__} {cid!r}")
        texts = [text for _, text in items]
        if vectors is None and self._encoder is not None and texts:
            vectors = self._encoder.encode_documents(texts)
        self.add_analyzed(ids, self._analyzer.analyze_batch(texts), vectors)

    def add_analyzed(
        self, ids: Sequence[str], terms: Sequence[Sequence[str]], vectors: np.ndarray | None
    ) -> None:
        """Index chunks as analysed terms (and vectors [N, D]), each on its shard."""
        if len(ids) != len(terms) or (vectors is not None and len(vectors) != len(ids)):
            raise ValueError(f"{len(ids)} ids, {len(terms)} analysed texts and vectors differ")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate chunk ids in one add; pass each chunk once")
        if self._encoder is not None and vectors is None and ids:
            raise ValueError("this sharded retriever is dense too; pass the chunk vectors")
        self._stats = None
        parts = self._partition(ids)
        args = [
            (
                [ids[i] for i in rows],
                [terms[i] for i in rows],
                None if vectors is None else np.ascontiguousarray(vectors[rows], np.float32),
            )
            for rows in parts
        ]
        self._call_each("add", args)

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove chunks; unknown ids are ignored. Returns how many were removed."""
        ids = list(set(chunk_ids))
        self._stats = None
        return sum(
            self._call_each("delete", [([ids[i] for i in rows],) for rows in self._partition(ids)])
        )

    def compact(self) -> None:
        """Drop deleted chunks in every shard."""
        self._call("compact")

    def encode(self, query: str, vector: np.ndarray | None = None) -> ShardQuery:
        """The query's analysed terms, and its vector (encoded here when not given)."""
        if vector is None and self._encoder is not None:
            vector = self._encoder.encode_queries([query])[0]
        terms = Counter(self._analyzer.analyze(query))
        return ShardQuery(query, {t: float(c) for t, c in terms.items()}, vector)

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: RetrievalMode | str | None = None,
        allowed: Collection[str] | None = None,
    ) -> list[Hit]:
        """Best chunks for `query` over all shards; see `HybridRetriever.search`.

        Raises:
            ValueError: For a mode this retriever cannot answer (splade, or dense without an
                encoder).
        """
        return self.search_encoded(self.encode(query), k, mode=mode, allowed=allowed)

    def search_encoded(
        self,
        query: ShardQuery,
        k: int = 10,
        *,
        mode: RetrievalMode | str | None = None,
        allowed: Collection[str] | None = None,
    ) -> list[Hit]:
        """Like `search`, for a query from `encode`."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        mode = self._mode(mode)
        parted = None if allowed is None else self._partition_ids(allowed)
        if mode in (RetrievalMode.BM25, RetrievalMode.DENSE):
            runs = self._runs(query, k, parted, {mode.value})
            ids, scores = runs.get(mode.value, ([], np.zeros(0, np.float32)))
            return [Hit(c, float(s)) for c, s in zip(ids, scores.tolist(), strict=True)]
        use = {name for name in ("bm25", "dense") if self._config.weight(name) > 0}
        return fuse_with_feedback(
            query, lambda q, depth: self._runs(q, depth, parted, use), self._feedback,
            self._config, k, prf=mode == RetrievalMode.HYBRID_PRF,
        )  # fmt: skip

    def close(self) -> None:
        """Stop the shard threads or actors; the retriever is unusable after."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        elif self._sharding.backend == ShardBackend.RAY:
            import ray

            for actor in self._shards:
                ray.kill(actor)
        self._shards = []

    # --- internals ---------------------------------------------------------------------------

    def _mode(self, mode: RetrievalMode | str | None) -> RetrievalMode:
        try:
            mode = RetrievalMode(mode if mode is not None else self._config.mode)
        except ValueError as exc:
            raise ValueError(
                f"unknown mode {mode!r}; use one of {[m.value for m in _MODES]}"
            ) from exc
        if mode not in _MODES or (mode == RetrievalMode.DENSE and self._encoder is None):
            raise ValueError(
                f"a sharded retriever answers {[m.value for m in _MODES]} (dense ones with a "
                f"dense encoder), not {mode.value!r}"
            )
        return mode

    def _partition(self, ids: Sequence[str]) -> list[list[int]]:
        """Row numbers of `ids` on each shard."""
        parts: list[list[int]] = [[] for _ in self._shards]
        for i, cid in enumerate(ids):
            parts[self.shard_of(cid)].append(i)
        return parts

    def _partition_ids(self, ids: Collection[str]) -> list[list[str]]:
        parts: list[list[str]] = [[] for _ in self._shards]
        for cid in ids:
            parts[self.shard_of(cid)].append(cid)
        return parts

    def _call(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every shard, in parallel; the results in shard order."""
        return self._call_each(method, [args] * len(self._shards))

    def _call_each(self, method: str, args: Sequence[tuple]) -> list[Any]:
        """`method(*args[i])` on shard i, in parallel; the results in shard order."""
        if self._pool is None:
            import ray

            return ray.get(
                [getattr(s, method).remote(*a) for s, a in zip(self._shards, args, strict=True)]
            )
        calls: list[Callable[[], Any]] = [getattr(s, method) for s in self._shards]
        if len(calls) == 1:
            return [calls[0](*args[0])]
        futures = [self._pool.submit(c, *a) for c, a in zip(calls, args, strict=True)]
        return [f.result() for f in futures]

    def _global_stats(self, terms: Iterable[str]) -> BM25Stats:
        """The whole collection's statistics, with the df of `terms` (cached until a change)."""
        terms = list(terms)
        cached = self._stats
        missing = terms if cached is None else [t for t in terms if t not in cached.df]
        if cached is None or missing:
            total = sum(self._call("statistics", missing), start=BM25Stats(0, 0.0))
            df = {**cached.df, **total.df} if cached is not None else dict(total.df)
            cached = BM25Stats(total.n_docs, total.total_length, df)
            self._stats = cached
        return cached

    def _runs(
        self, query: ShardQuery, depth: int, parted: list[list[str]] | None, use: set[str]
    ) -> dict[str, Run]:
        """The runs in `use` ("bm25", "dense") that the query is encoded for, merged over
        the shards (one call to each shard)."""
        terms = query.terms if "bm25" in use and query.terms else None
        vector = query.dense if "dense" in use and self._encoder is not None else None
        stats = self._global_stats(terms) if terms else None
        per_shard = self._call_each(
            "search",
            [
                (terms, stats, vector, depth, None if parted is None else parted[i])
                for i in range(len(self._shards))
            ],
        )
        runs: dict[str, Run] = {}
        for name in ("bm25", "dense"):
            parts = [r[name] for r in per_shard if name in r]
            if parts:
                runs[name] = _merge(parts, depth)
        return runs

    def _feedback(self, query: ShardQuery, chunk_ids: Sequence[str]) -> ShardQuery:
        """The query rewritten from the feedback chunks (RM3 for the terms, Rocchio for the
        vector), as `HybridRetriever` rewrites it."""
        p = self._config.prf
        parts = self._partition_ids(chunk_ids)
        got = self._call_each("feedback", [(ids,) for ids in parts])
        rows: dict[str, dict[str, float]] = {}
        vecs: dict[str, np.ndarray] = {}
        for ids, (shard_rows, shard_vecs) in zip(parts, got, strict=True):
            rows.update(zip(ids, shard_rows, strict=True))
            if shard_vecs is not None:
                vecs.update(zip(ids, shard_vecs, strict=True))
        order = [cid for cid in chunk_ids if cid in rows]  # the fused order, as HybridRetriever
        terms = dense = None
        if query.terms is not None:
            # NOTE: numbered in sorted order, so that RM3's ties fall the same way however the
            # chunks are sharded.
            words = sorted({t for r in [query.terms, *rows.values()] for t in r})
            vocab = {t: i for i, t in enumerate(words)}
            q = _weights(query.terms, vocab)
            fb = [_weights(rows[cid], vocab) for cid in order]
            expanded = rm3(q, fb, n_terms=p.rm3_terms, original_weight=p.rm3_original_weight)
            names = {i: t for t, i in vocab.items()}
            terms = {
                names[t]: w
                for t, w in zip(expanded.terms.tolist(), expanded.weights.tolist(), strict=True)
            }
        if query.dense is not None:
            fb_vecs = np.asarray([vecs[cid] for cid in order if cid in vecs], np.float32)
            fb_vecs = fb_vecs.reshape(-1, len(query.dense))
            dense = rocchio_dense(query.dense, fb_vecs, alpha=p.rocchio_alpha, beta=p.rocchio_beta)
        return ShardQuery(query.text, terms, dense)


def _weights(terms: Mapping[str, float], vocab: Mapping[str, int]) -> TermWeights:
    """Term -> weight as TermWeights over the term ids of `vocab`."""
    return TermWeights.from_dict({vocab[t]: w for t, w in terms.items()})


def _merge(runs: Sequence[Run], k: int) -> Run:
    """The k best of several shards' runs: by score, then chunk id (as fusion breaks ties)."""
    ids = np.asarray([cid for r in runs for cid in r[0]], dtype=str)
    scores = np.concatenate([np.asarray(r[1], dtype=np.float32) for r in runs])
    if len(ids) == 0:
        return [], scores
    order = np.lexsort((ids, -scores))[:k]
    return ids[order].tolist(), scores[order]
