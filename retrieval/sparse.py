"""Sparse retrieval: BM25 over analysed words, and learned sparse (SPLADE) over a model's vocabulary.

Both keep an inverted index that grows by segments and forgets deleted chunks at once, so
documents can come and go without a rebuild; both save to one `.npz` file, written atomically.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._io import check_generation, check_meta, part_path, read_npz, stamp, write_npz
from ._postings import Postings, TermWeights
from ._text import Analyzer
from ._types import Hit, SparseEncoder
from .config import BM25Config, SpladeConfig

logger = logging.getLogger(__name__)

__all__ = ["BM25Index", "BM25Stats", "SpladeIndex"]

_BATCH = 2048


@dataclass(frozen=True, slots=True)
class BM25Stats:
    """The collection statistics BM25 scores with.

    A shard scored with the whole collection's statistics (the sum of every shard's) gives each
    chunk the score the unsharded index would; with its own, scores of shards do not compare.
    """

    n_docs: int
    total_length: float  # analysed terms over all documents (sum of document lengths)
    df: Mapping[str, int] = field(default_factory=dict)  # documents holding each (query) term

    def __add__(self, other: BM25Stats) -> BM25Stats:
        df = dict(self.df)
        for term, count in other.df.items():
            df[term] = df.get(term, 0) + count
        return BM25Stats(self.n_docs + other.n_docs, self.total_length + other.total_length, df)


def _batched(items: Iterable[tuple[str, str]], size: int) -> Iterable[tuple[list[str], list[str]]]:
    ids: list[str] = []
    texts: list[str] = []
    for chunk_id, text in items:
        if not isinstance(chunk_id, str):
            raise TypeError(f"chunk ids must be str, got {type(chunk_id).__name__} {chunk_id!r}")
        ids.append(chunk_id)
        texts.append(text)
        if len(ids) == size:
            yield ids, texts
            ids, texts = [], []
    if ids:
        yield ids, texts


class _PostingsIndex:
    """What BM25 and SPLADE share: chunk bookkeeping, feedback rows, top-k."""

    _postings: Postings

    def __len__(self) -> int:
        return len(self._postings)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._postings

    def chunk_ids(self) -> list[str]:
        """Ids of the indexed chunks, in insertion order."""
        return self._postings.chunk_ids()

    def posting_counts(self) -> tuple[int, int]:
        """(postings stored, vocabulary size): the index's size in its own units."""
        post = self._postings
        return int(sum(len(seg.inv_slots) for seg in post.segments)), len(post.df)

    def compact(self) -> None:
        """Merge segments and drop deleted chunks (what `save` does first)."""
        self._postings.compact()

    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove chunks; unknown ids are ignored.

        Args:
            chunk_ids: Ids to remove.

        Returns:
            How many chunks were removed.
        """
        return self._postings.delete(set(chunk_ids))

    def rows(self, chunk_ids: Sequence[str]) -> list[TermWeights]:
        """Stored term weights of each chunk (raw term frequencies for BM25), for feedback."""
        slots = self._postings.slots_of(chunk_ids)
        out = []
        for slot in slots.tolist():
            terms, vals = self._postings.row(slot)
            out.append(TermWeights(terms.astype(np.int64), vals))
        return out

    def search(
        self, query: str, k: int = 10, *, allowed: Collection[str] | None = None
    ) -> list[Hit]:
        """Best chunks for `query`.

        Args:
            query: Query text.
            k: How many hits at most.
            allowed: If given, only these chunk ids can be returned.

        Returns:
            Up to k hits, best first; chunks that match no query term are never returned.
        """
        return self.search_encoded(self.encode_query(query), k, allowed=allowed)

    def search_encoded(
        self, query: TermWeights, k: int = 10, *, allowed: Collection[str] | None = None
    ) -> list[Hit]:
        """Like `search`, for a query already encoded (or rewritten by feedback)."""
        ids, scores = self.search_arrays(query, k, allowed=allowed)
        return [Hit(c, s) for c, s in zip(ids, scores.tolist(), strict=True)]

    def search_arrays(
        self, query: TermWeights, k: int, *, allowed: Collection[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """`search_encoded` as chunk ids and a float32 score array (no Hit objects)."""
        if not self._searchable(query, k):
            return [], np.zeros(0, dtype=np.float32)
        return self._top(self._scores(query), k, allowed)

    def _searchable(self, query: TermWeights, k: int) -> bool:
        """False when nothing can match; raises on a bad k."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return len(self._postings) > 0 and len(query.terms) > 0

    def _top(
        self, scores: np.ndarray, k: int, allowed: Collection[str] | None
    ) -> tuple[list[str], np.ndarray]:
        slots = None if allowed is None else self._postings.slots_of(allowed)
        return self._postings.top(scores, k, slots)

    def encode_query(self, query: str) -> TermWeights:  # pragma: no cover - abstract
        raise NotImplementedError

    def _scores(self, query: TermWeights) -> np.ndarray:
        """[n_slots] float32 scores of every slot."""
        return self._postings.accumulate(query)


class BM25Index(_PostingsIndex):
    """BM25 (Lucene's formula) over stemmed words, with incremental add and delete.

    `k1` and `b` apply at query time, so they can change without a rebuild; the analyser
    (stemmer, stop words) is fixed when the index is built.
    """

    FILE = "bm25.npz"

    def __init__(self, config: BM25Config | None = None) -> None:
        self._config = config or BM25Config()
        self._analyzer = Analyzer(self._config.stemmer, self._config.stopwords)
        self._vocab: dict[str, int] = {}
        self._terms: list[str] = []
        self._postings = Postings()
        self._norm: tuple[tuple, list[np.ndarray]] | None = None  # (key, per-segment tf norm)

    @property
    def config(self) -> BM25Config:
        return self._config

    def with_config(self, config: BM25Config) -> BM25Index:
        """A view on the same data with other query-time settings (k1, b).

        Raises:
            ValueError: If `config` changes the analyser, which is fixed at build time.
        """
        if (config.stemmer, config.stopwords) != (self._config.stemmer, self._config.stopwords):
            raise ValueError(
                "the stemmer and stop words are fixed when the index is built; rebuild it"
            )
        view = copy.copy(self)
        view._config = config
        view._norm = None
        return view

    def term(self, term_id: int) -> str:
        """The analysed term behind an id (for debugging feedback queries)."""
        return self._terms[term_id]

    def add(self, items: Iterable[tuple[str, str]]) -> None:
        """Index (chunk_id, text) pairs; a chunk id already present is replaced.

        Args:
            items: Pairs of chunk id (str) and text.
        """
        ids: list[str] = []
        docs: list[list[str]] = []
        for batch_ids, texts in _batched(items, _BATCH):
            ids.extend(batch_ids)
            docs.extend(self.analyze(texts))
        self.add_analyzed(ids, docs)

    def analyze(self, texts: Sequence[str]) -> list[list[str]]:
        """The terms of each text, as `add_analyzed` takes them (no change to the index)."""
        return self._analyzer.analyze_batch(list(texts))

    def add_analyzed(self, chunk_ids: Sequence[str], docs: Sequence[Sequence[str]]) -> None:
        """Index chunks whose texts went through `analyze`; an id already present is replaced."""
        if len(chunk_ids) != len(docs):
            raise ValueError(f"{len(chunk_ids)} chunk ids for {len(docs)} analysed texts")
        if not chunk_ids:
            return
        vocab = self._vocab
        for doc in docs:
            for term in doc:
                if term not in vocab:
                    vocab[term] = len(self._terms)
                    self._terms.append(term)
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        cols = np.fromiter(
            (vocab[t] for d in docs for t in d), dtype=np.int64, count=int(lengths.sum())
        )
        rows = np.repeat(np.arange(len(chunk_ids)), lengths)
        # coo -> csr sums duplicate (row, term) pairs into term frequencies
        mat = sp.coo_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)),
            shape=(len(chunk_ids), len(self._terms)),
        ).tocsr()
        self._postings.add(list(chunk_ids), mat)

    def encode_query(self, query: str) -> TermWeights:
        """Query term counts, over terms the index knows."""
        counts = Counter(t for t in self._analyzer.analyze(query) if t in self._vocab)
        return TermWeights.from_dict({self._vocab[t]: float(c) for t, c in counts.items()})

    def encode_queries(self, queries: Sequence[str]) -> list[TermWeights]:
        """`encode_query` for each query."""
        return [self.encode_query(q) for q in queries]

    def encode_terms(self, weights: Mapping[str, float]) -> TermWeights:
        """A query given as analysed terms and their weights, over the terms the index knows."""
        return TermWeights.from_dict(
            {self._vocab[t]: float(w) for t, w in weights.items() if t in self._vocab}
        )

    def term_weights(self, query: TermWeights) -> dict[str, float]:
        """The inverse of `encode_terms`: analysed term -> weight."""
        terms = self._terms
        return {
            terms[t]: w for t, w in zip(query.terms.tolist(), query.weights.tolist(), strict=True)
        }

    def statistics(self, terms: Iterable[str] = ()) -> BM25Stats:
        """This index's collection statistics, with the document frequency of `terms`."""
        post = self._postings
        df = {}
        for term in terms:
            i = self._vocab.get(term)
            df[term] = int(post.df[i]) if i is not None and i < len(post.df) else 0
        return BM25Stats(len(post), self._own_length(), df)

    def search_arrays(
        self,
        query: TermWeights,
        k: int,
        *,
        allowed: Collection[str] | None = None,
        stats: BM25Stats | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """`search_encoded` as chunk ids and a float32 score array (no Hit objects).

        Args:
            query: Term ids (of this index) and weights.
            k: How many hits at most.
            allowed: If given, only these chunk ids can be returned.
            stats: Score with these collection statistics (those of every shard together, for
                a shard) instead of this index's own; `df` must hold the query's terms.
        """
        if not self._searchable(query, k):
            return [], np.zeros(0, dtype=np.float32)
        return self._top(self._scores(query, stats), k, allowed)

    def _own_length(self) -> float:
        """Sum of the live documents' lengths (float64 sum of integers: exact, any order)."""
        post = self._postings
        return float(post.row_sum[post.alive].sum(dtype=np.float64))

    def _scores(self, query: TermWeights, stats: BM25Stats | None = None) -> np.ndarray:
        post = self._postings
        df = np.zeros(len(query.terms), dtype=np.float64)
        if stats is None:
            n = len(post)
            known = query.terms < len(post.df)
            df[known] = post.df[query.terms[known]]
            tf_norm = self._tf_norm(None)
        else:
            n = stats.n_docs
            df[:] = [stats.df.get(self._terms[t], 0) for t in query.terms.tolist()]
            tf_norm = self._tf_norm(stats.total_length / n if n else 1.0)
        n = max(n, 1)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        weighted = TermWeights(query.terms, (query.weights * idf).astype(np.float32))
        return post.accumulate(weighted, tf_norm)

    def _tf_norm(self, avgdl: float | None) -> list[np.ndarray]:
        """Per segment, `tf / (tf + k1 * (1 - b + b * len / avglen))` of each posting.

        `avgdl`: the average length to use (a whole collection's), None for this index's own.
        Recomputed after the chunks change (avglen moves), or k1, b or the given average do;
        so queries cost one multiply per posting.
        """
        post = self._postings
        key = (post.version, self._config.k1, self._config.b, avgdl)
        if self._norm is None or self._norm[0] != key:
            if avgdl is None:
                avgdl = self._own_length() / len(post) if len(post) else 1.0
            k1, b = self._config.k1, self._config.b
            length = (k1 * (1.0 - b + b * post.row_sum / max(avgdl, 1e-9))).astype(np.float32)
            tfn = [seg.inv_vals / (seg.inv_vals + length[seg.inv_slots]) for seg in post.segments]
            self._norm = (key, tfn)
        return self._norm[1]

    def save(self, directory: Path, *, generation: str | None = None) -> None:
        """Write `directory/bm25.npz` (`bm25.<generation>.npz` when given) atomically.

        Compacts the index first.
        """
        arrays = self._postings.state()
        arrays["vocab"] = np.asarray(self._terms, dtype=str)
        meta = {
            "kind": "bm25",
            "stemmer": self._config.stemmer,
            "stopwords": self._config.stopwords,
        }
        write_npz(part_path(directory, self.FILE, generation), stamp(meta, generation), arrays)

    @classmethod
    def load(
        cls, directory: Path, config: BM25Config | None = None, *, generation: str | None = None
    ) -> BM25Index:
        """Read what `save` wrote (with the same `generation`).

        Raises:
            FileNotFoundError: If there is no saved BM25 index in `directory`.
            IndexMismatchError: If it was built with another stemmer or stop-word list, or
                belongs to another save.
        """
        path = part_path(directory, cls.FILE, generation)
        meta, arrays = read_npz(path, "bm25")
        check_generation(path, meta, generation)
        self = cls(config)
        check_meta(
            path, meta, {"stemmer": self._config.stemmer, "stopwords": self._config.stopwords}
        )
        self._terms = arrays.pop("vocab").tolist()
        self._vocab = {t: i for i, t in enumerate(self._terms)}
        self._postings = Postings.from_state(arrays)
        return self


def _prune_rows(mat: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the n largest entries of each row."""
    mat = mat.tocsr().astype(np.float32)
    mat.eliminate_zeros()
    counts = np.diff(mat.indptr)
    if counts.max(initial=0) <= n:
        return mat
    keep = np.ones(len(mat.data), dtype=bool)
    for r in np.flatnonzero(counts > n).tolist():
        a, b = mat.indptr[r], mat.indptr[r + 1]
        drop = np.argpartition(-mat.data[a:b], n - 1)[n:]
        keep[a + drop] = False
    rows = np.repeat(np.arange(mat.shape[0]), counts)[keep]
    return sp.csr_matrix((mat.data[keep], (rows, mat.indices[keep])), shape=mat.shape)


class SpladeIndex(_PostingsIndex):
    """Learned sparse retrieval: inner product of SPLADE term weights, over an inverted index."""

    FILE = "splade.npz"

    def __init__(self, encoder: SparseEncoder, config: SpladeConfig | None = None) -> None:
        self._encoder = encoder
        self._config = config or SpladeConfig()
        self._postings = Postings()

    @property
    def config(self) -> SpladeConfig:
        return self._config

    @property
    def encoder(self) -> SparseEncoder:
        return self._encoder

    def with_config(self, config: SpladeConfig) -> SpladeIndex:
        """A view on the same data with another `query_max_terms`.

        Raises:
            ValueError: If `config` changes `doc_max_terms`, which is fixed at build time.
        """
        if config.doc_max_terms != self._config.doc_max_terms:
            raise ValueError("doc_max_terms is fixed when the index is built; rebuild it")
        view = copy.copy(self)
        view._config = config
        return view

    def add(self, items: Iterable[tuple[str, str]], *, batch_size: int = 256) -> None:
        """Encode and index (chunk_id, text) pairs; a chunk id already present is replaced.

        Args:
            items: Pairs of chunk id (str) and text.
            batch_size: Texts per encoder call (bounds memory).
        """
        ids: list[str] = []
        texts: list[str] = []
        for batch_ids, batch_texts in _batched(items, batch_size):
            ids.extend(batch_ids)
            texts.extend(batch_texts)
        if ids:
            self.add_rows(ids, self.encode_documents(texts, batch_size=batch_size))

    def encode_documents(self, texts: Sequence[str], *, batch_size: int = 256) -> sp.csr_matrix:
        """Pruned document term weights [N, V] for `add_rows` (no change to the index)."""
        parts = [
            _prune_rows(
                self._encoder.encode_documents(list(texts[i : i + batch_size])),
                self._config.doc_max_terms,
            )
            for i in range(0, len(texts), batch_size)
        ]
        if not parts:
            return sp.csr_matrix((0, self._encoder.vocab_size), dtype=np.float32)
        return sp.vstack(parts, format="csr")

    def add_rows(self, chunk_ids: Sequence[str], rows: sp.csr_matrix) -> None:
        """Index pre-computed document term weights [N, V] (pruned to `doc_max_terms`)."""
        if rows.shape[1] != self._encoder.vocab_size:
            raise ValueError(
                f"rows have {rows.shape[1]} columns, the encoder {self._encoder.vocab_size}"
            )
        self._postings.add(list(chunk_ids), _prune_rows(rows, self._config.doc_max_terms))

    def encode_query(self, query: str) -> TermWeights:
        """The query's highest-weighted `query_max_terms` terms."""
        return self.encode_queries([query])[0]

    def encode_queries(self, queries: Sequence[str]) -> list[TermWeights]:
        """`encode_query` for each query, in one encoder call."""
        if not queries:
            return []
        mat = self._encoder.encode_queries(list(queries)).tocsr()
        out = []
        for r in range(mat.shape[0]):
            a, b = mat.indptr[r], mat.indptr[r + 1]
            tw = TermWeights(mat.indices[a:b].astype(np.int64), mat.data[a:b].astype(np.float32))
            out.append(tw.top(self._config.query_max_terms))
        return out

    def save(self, directory: Path, *, generation: str | None = None) -> None:
        """Write `directory/splade.npz` (`splade.<generation>.npz` when given) atomically.

        Compacts the index first.
        """
        meta = {
            "kind": "splade",
            "encoder": self._encoder.name,
            "vocab_size": self._encoder.vocab_size,
        }
        path = part_path(directory, self.FILE, generation)
        write_npz(path, stamp(meta, generation), self._postings.state())

    @classmethod
    def load(
        cls,
        directory: Path,
        encoder: SparseEncoder,
        config: SpladeConfig | None = None,
        *,
        generation: str | None = None,
    ) -> SpladeIndex:
        """Read what `save` wrote (with the same `generation`).

        Raises:
            FileNotFoundError: If there is no saved SPLADE index in `directory`.
            IndexMismatchError: If it was built with another encoder, or belongs to another save.
        """
        path = part_path(directory, cls.FILE, generation)
        meta, arrays = read_npz(path, "splade")
        check_generation(path, meta, generation)
        check_meta(path, meta, {"encoder": encoder.name, "vocab_size": encoder.vocab_size})
        self = cls(encoder, config)
        self._postings = Postings.from_state(arrays)
        return self
