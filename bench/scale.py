"""Scale benchmark (issue 10): a synthetic library of N chunks (default 1M), run by hand.

    OMP_WAIT_POLICY=PASSIVE nice -n 5 .venv/bin/python -m bench.scale --chunks 1000000 \\
        --workdir WORK --json WORK/scale.json   # WORK: a scratch folder outside the repository

(`OMP_WAIT_POLICY=PASSIVE`: FAISS's OpenMP threads spin while waiting, which is very slow when
other processes hold the cores.)

Measures, on one machine: build time of the dense IVF-PQ index (training and adding) and of
BM25 (analysis and indexing); vector-index bytes and process memory; p50/p95 latency of dense,
BM25, hybrid and hybrid-prf queries; recall@10 of the IVF-PQ search against exact search (flat
inner product over the same float32 vectors); the same memory-mapped from disk; and the same
over S=2 in-process shards (`retrieval.ShardedRetriever`). Generated data stays in --workdir.

The data (deterministic for a --seed):

- Vectors: 384-d, L2-normalised, from a Gaussian mixture of --topics centres. Centres and the
  spread around them are drawn in a random orthonormal basis whose axis variances fall as
  i^-0.85 (i = 1..384), plus a shared mean direction. Uniform noise would be the worst case
  for any quantiser and unlike any encoder; these parameters were fitted to 3,000 MiniLM
  (all-MiniLM-L6-v2) vectors of ../shared/data/ir chunks, which have an eigenvalue decay of
  i^-0.84, a participation-ratio dimension of 62, a mean random-pair cosine of 0.054, a mean
  vector of norm 0.23 and a mean nearest-neighbour cosine of 0.68 among the 3,000. The generator
  gives 0.87, 59, 0.050, 0.22 and 0.63 on the same measures (`describe_vectors`).
- Text: a vocabulary of --vocab words, the 100 most common English words first and then
  pseudo-words of 1 to 4 syllables (longer ones rarer), drawn with Zipf-Mandelbrot frequencies
  p(r) ~ 1 / (r + 2.7) (the classic English fit); each topic (the chunk's mixture centre) has
  150 content words of middle frequency that make a quarter of its chunks' words, so BM25 and
  the vectors agree on what is related. Chunks are 60 to 250 words (mean 150).
- Queries: --queries held-out chunks (never indexed); the vector is the chunk's, perturbed to a
  cosine of about 0.9 with it, and the text is three of its topic's words and one common word.

Dense query encoding (MiniLM, ~20 ms on two cores; BENCHMARKS.md, issue 3) is not included:
vectors are given. BM25 query analysis is.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import (
    BM25Index,
    DenseConfig,
    DenseIndex,
    DenseIndexKind,
    EncodedQuery,
    HybridRetriever,
    RetrievalConfig,
    ShardedRetriever,
    ShardingConfig,
)

logger = logging.getLogger("bench.scale")

D = 384
_BATCH = 50_000  # chunks generated (and indexed) at a time
_COMMON = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "she",
    "other",
    "its",
    "may",
    "these",
    "what",
    "them",
    "than",
    "some",
    "him",
    "time",
    "into",
    "only",
    "do",
    "could",
    "new",
    "about",
    "two",
    "first",
    "then",
    "also",
    "any",
    "like",
    "our",
    "over",
    "such",
    "most",
    "after",
    "made",
    "where",
    "well",
    "years",
    "used",
    "between",
    "each",
    "many",
    "very",
    "must",
    "through",
    "how",
    "see",
    "way",
    "even",
    "because",
    "same",
    "those",
    "being",
    "under",
    "both",
    "while",
    "should",
    "three",
]
_ONSETS = [
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "br",
    "cl",
    "dr",
    "fl",
    "gr",
    "pl",
    "pr",
    "sk",
    "st",
    "tr",
    "ch",
    "sh",
    "th",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "rk", "ng"]


class SyntheticEncoder:
    """Name and size of the synthetic vectors (they are generated, never encoded from text)."""

    name = f"synthetic-{D}"
    dim = D

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        raise TypeError("the benchmark's vectors are generated; pass them")

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        raise TypeError("the benchmark's vectors are generated; pass them")


class Corpus:
    """Deterministic synthetic chunks: vectors (batch by batch), texts and queries."""

    def __init__(self, n: int, *, topics: int, vocab: int, seed: int, spread: float) -> None:
        self.n = n
        self.seed = seed
        self.spread = spread
        rng = np.random.default_rng(seed)
        self.basis, _ = np.linalg.qr(rng.standard_normal((D, D)))  # [D, D] orthonormal
        spectrum = np.arange(1, D + 1) ** (-0.85 / 2)  # per-axis std: variance ~ i^-0.85
        self.spectrum = spectrum / np.sqrt((spectrum**2).sum())
        mean = rng.standard_normal(D)
        self.mean = mean / np.linalg.norm(mean)
        centres = self._shaped(rng, topics)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)  # [topics, D]
        self.words = _vocabulary(vocab, rng)
        ranks = np.arange(len(self.words), dtype=np.float64)
        p = 1.0 / (ranks + 2.7)
        self.cdf = np.cumsum(p / p.sum())
        lo, hi = min(1000, vocab // 4), vocab
        self.topic_words = rng.integers(lo, hi, size=(topics, 150))  # [topics, 150]
        tp = 1.0 / np.arange(1, 151)
        self.topic_cdf = np.cumsum(tp / tp.sum())

    def _shaped(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n Gaussian vectors with the spectrum's variances, in the random basis: [n, D]."""
        return (rng.standard_normal((n, D)) * self.spectrum) @ self.basis.T

    def _points(self, topic: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = self.centres[topic] + self.spread * self._shaped(rng, len(topic)) + 0.3 * self.mean
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def batch(self, b: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Topics [size] and vectors [size, D] of batch b (chunks b*_BATCH onwards)."""
        rng = np.random.default_rng((self.seed, 1, b))
        topic = rng.integers(0, len(self.centres), size)
        return topic, self._points(topic, rng)

    def texts(self, b: int, topic: np.ndarray) -> list[str]:
        """Texts of batch b's chunks, given their topics."""
        rng = np.random.default_rng((self.seed, 2, b))
        lengths = np.clip(rng.normal(150, 35, len(topic)), 60, 250).astype(np.int64)
        total = int(lengths.sum())
        owner = np.repeat(topic, lengths)
        background = np.searchsorted(self.cdf, rng.random(total))
        topical = self.topic_words[owner, np.searchsorted(self.topic_cdf, rng.random(total))]
        tokens = np.where(rng.random(total) < 0.25, topical, background).tolist()
        words = self.words
        out, a = [], 0
        for length in lengths.tolist():
            out.append(" ".join([words[t] for t in tokens[a : a + length]]))
            a += length
        return out

    def queries(self, q: int) -> tuple[list[str], np.ndarray]:
        """q held-out queries: texts and vectors [q, D] (cosine ~0.9 with a held-out chunk)."""
        rng = np.random.default_rng((self.seed, 3))
        topic = rng.integers(0, len(self.centres), q)
        held_out = self._points(topic, rng)
        noise = self._shaped(rng, q)
        noise *= 0.45 / np.linalg.norm(noise, axis=1, keepdims=True)
        vecs = held_out + noise
        vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
        texts = []
        for t in topic.tolist():
            own = self.topic_words[t, np.searchsorted(self.topic_cdf, rng.random(3))]
            common = int(np.searchsorted(self.cdf, rng.random() * self.cdf[200]))
            texts.append(" ".join(self.words[w] for w in [*own.tolist(), common]))
        return texts, vecs


def _vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    """`size` distinct words: common English first, then pseudo-words growing with rank."""
    words = list(dict.fromkeys(_COMMON))
    seen = set(words)
    while len(words) < size:
        rank_frac = len(words) / size
        syllables = 1 + int(rng.integers(0, 2)) + int(rank_frac * 2.5)
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        )
        if word not in seen and len(word) > 2:
            seen.add(word)
            words.append(word)
    return words


def describe_vectors(x: np.ndarray) -> dict[str, float]:
    """The statistics the generator was fitted on, for a sample x [n, D] (n ~ 3000)."""
    s = x @ x.T
    np.fill_diagonal(s, np.nan)
    ev = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    i = np.arange(1, len(ev) + 1)
    slope = np.polyfit(np.log(i[4:200]), np.log(np.clip(ev[4:200], 1e-12, None)), 1)[0]
    return {
        "random_pair_cos": float(np.nanmean(s)),
        "nn_cos": float(np.nanmean(np.nanmax(s, axis=1))),
        "participation_dim": float(ev.sum() ** 2 / (ev**2).sum()),
        "eigen_decay": float(-slope),
        "mean_norm": float(np.linalg.norm(x.mean(axis=0))),
    }


def _batches(n: int) -> Iterator[tuple[int, int, int]]:
    """(batch number, first chunk, size)."""
    for b, start in enumerate(range(0, n, _BATCH)):
        yield b, start, min(_BATCH, n - start)


def _ids(start: int, size: int) -> list[str]:
    return [f"c{i:07d}" for i in range(start, start + size)]


def _anon_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) / 1024


class _PeakAnon(threading.Thread):
    """Samples anonymous memory every 0.1 s: the peak of what the process itself allocated
    (ru_maxrss also counts the pages of mapped files, here the vectors and the index)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, _anon_mb())
            time.sleep(0.1)


_PEAK = _PeakAnon()


def _mem() -> dict[str, float]:
    """Process memory now (MB): anonymous, file-backed (mapped files), and the peaks so far."""
    status = Path("/proc/self/status").read_text()

    def field(name: str) -> float:
        return int(re.search(rf"{name}:\s+(\d+) kB", status).group(1)) / 1024

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon = field("RssAnon")
    return {
        "anon_mb": anon,
        "file_mb": field("RssFile"),
        "peak_anon_mb": max(_PEAK.peak, anon),
        "peak_rss_mb": peak,
    }


class _TrainTime(logging.Handler):
    """Collects the 'trained in N s' messages of dense indexes."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("dense index: trained in"):
            self.seconds.append(float(record.args[0]))


def _latency(fn: Callable[[int], Any], n: int, warmup: int = 10) -> dict[str, float]:
    for i in range(min(warmup, n)):
        fn(i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "mean_ms": float(np.mean(times)),
    }


def _recall(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(
        np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])
    )


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[list[str]]:
    """Exact top k chunk ids of each query by inner product over vectors [N, D] (in blocks)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for a in range(0, len(vectors), 200_000):
        s = queries @ np.asarray(vectors[a : a + 200_000]).T  # [Q, b]
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, axis=1)], axis=1)
        best_i = np.concatenate([best_i, top + a], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(best_s, keep, axis=1)
        best_i = np.take_along_axis(best_i, keep, axis=1)
    return [[f"c{i:07d}" for i in row] for row in best_i.tolist()]


def run(
    chunks: int,
    *,
    workdir: Path,
    queries: int = 200,
    topics: int = 1000,
    vocab: int = 50_000,
    seed: int = 0,
    spread: float = 0.85,
    nprobe: int = 32,
    refine_factor: int = 8,
    shards: int = 2,
    part: str = "all",
    skip_sharded: bool = False,
) -> dict[str, Any]:
    """Build, measure and return every number (see the module docstring).

    `part`: "single" (the unsharded index), "sharded", or "all": both, the sharded part in a
    child process so that each part's memory is its own (a process keeps freed memory).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if not _PEAK.is_alive():
        _PEAK.start()
    settings = {"chunks": chunks, "queries": queries, "seed": seed, "topics": topics}
    settings |= {"vocab": vocab, "spread": spread}
    out: dict[str, Any] = dict(settings)
    corpus = Corpus(chunks, topics=topics, vocab=vocab, seed=seed, spread=spread)
    q_texts, q_vecs = corpus.queries(queries)

    # --- vectors, to a file (so the exact search and the shards re-read them) -------------
    start = time.perf_counter()
    vectors, topic_of, reused = _vectors(corpus, workdir, settings)
    out["generate_vectors_s"] = None if reused else time.perf_counter() - start
    out["vector_stats"] = describe_vectors(np.asarray(vectors[:3000]))
    logger.info("vectors: %s s, %s", out["generate_vectors_s"], out["vector_stats"])

    start = time.perf_counter()
    exact = exact_top(vectors, q_vecs, 10)
    out["exact_search_s"] = time.perf_counter() - start
    reference = workdir / "reference.json"  # the unsharded hybrid top 10, for the shards
    dense_cfg = DenseConfig(
        index=DenseIndexKind.IVFPQ,
        ivfpq_threshold=int(chunks * 0.95),  # shards: trains once 95% are in, then appends
        ivfpq_nprobe=nprobe,
        ivfpq_refine_factor=refine_factor,
    )
    if part == "sharded":
        hybrid_top = json.loads(reference.read_text()) if reference.is_file() else None
        out["sharded"] = _sharded(
            corpus, vectors, topic_of, shards, dense_cfg, q_texts, q_vecs, exact, hybrid_top
        )
        out["sharded"]["peak"] = _mem()
        return out

    # --- dense IVF-PQ ------------------------------------------------------------------------
    trained = _TrainTime()
    logging.getLogger("retrieval.dense").addHandler(trained)
    mem0 = _mem()
    dense = DenseIndex(SyntheticEncoder(), dense_cfg)
    start = time.perf_counter()
    # One add of every vector (read from the file as it goes): train on a sample, then add.
    dense.add_vectors(_ids(0, chunks), vectors)
    out["dense_build_s"] = time.perf_counter() - start
    out["dense_train_s"] = sum(trained.seconds)
    out["dense_index_bytes"] = dense.index_bytes()
    out["dense_nlist"] = dense.ivf_lists
    gc.collect()
    out["mem_after_dense"] = _mem()
    out["mem_before_dense"] = mem0
    logger.info("dense: %.1f s (train %.1f s)", out["dense_build_s"], out["dense_train_s"])

    # --- BM25 --------------------------------------------------------------------------------
    bm25 = BM25Index()
    gen_s = analyze_s = index_s = 0.0
    for b, a, size in _batches(chunks):
        t0 = time.perf_counter()
        texts = corpus.texts(b, topic_of[a : a + size])
        t1 = time.perf_counter()
        terms = bm25.analyze(texts)
        t2 = time.perf_counter()
        bm25.add_analyzed(_ids(a, size), terms)
        t3 = time.perf_counter()
        gen_s, analyze_s, index_s = gen_s + t1 - t0, analyze_s + t2 - t1, index_s + t3 - t2
        del texts, terms
    t0 = time.perf_counter()
    bm25.compact()
    index_s += time.perf_counter() - t0
    out |= {"generate_text_s": gen_s, "bm25_analyze_s": analyze_s, "bm25_index_s": index_s}
    out["bm25_postings"], out["bm25_vocab"] = bm25.posting_counts()
    gc.collect()
    out["mem_after_bm25"] = _mem()
    logger.info("bm25: analyse %.1f s, index %.1f s", analyze_s, index_s)

    # --- queries -----------------------------------------------------------------------------
    retriever = HybridRetriever(bm25=bm25, dense=dense, config=RetrievalConfig())
    encoded = [
        EncodedQuery(t, bm25=bm25.encode_query(t), dense=v)
        for t, v in zip(q_texts, q_vecs, strict=True)
    ]
    dense_hits = [dense.search_arrays(v, 10)[0] for v in q_vecs]
    out["recall@10"] = _recall(dense_hits, exact)
    lat: dict[str, Any] = {
        "dense": _latency(lambda i: dense.search_arrays(q_vecs[i], 10), queries),
        "bm25": _latency(lambda i: bm25.search_arrays(bm25.encode_query(q_texts[i]), 10), queries),
    }
    for mode in ("hybrid", "hybrid-prf"):

        def query(i: int, mode: str = mode) -> None:
            q = EncodedQuery(q_texts[i], bm25=bm25.encode_query(q_texts[i]), dense=q_vecs[i])
            retriever.search_encoded(q, 10, mode=mode)

        lat[mode] = _latency(query, queries)
    out["latency"] = lat
    hybrid_top = [
        [h.chunk_id for h in retriever.search_encoded(q, 10, mode="hybrid")] for q in encoded
    ]
    out["sweep"] = []
    for npb in (16, 32, 64):
        for rf in (2, 4, 8):
            view = dense.with_config(
                dense_cfg.model_copy(update={"ivfpq_nprobe": npb, "ivfpq_refine_factor": rf})
            )
            hits = [view.search_arrays(v, 10)[0] for v in q_vecs]
            row = {"nprobe": npb, "refine_factor": rf, "recall@10": _recall(hits, exact)}
            row |= _latency(lambda i, view=view: view.search_arrays(q_vecs[i], 10), queries)
            out["sweep"].append(row)
            logger.info("sweep %s", row)
    logger.info("latency %s recall %.3f", lat, out["recall@10"])

    # --- memory-mapped from disk -------------------------------------------------------------
    save_dir = workdir / "index"
    shutil.rmtree(save_dir, ignore_errors=True)
    start = time.perf_counter()
    dense.save(save_dir)
    out["dense_save_s"] = time.perf_counter() - start
    out["dense_file_bytes"] = (save_dir / DenseIndex.FAISS_FILE).stat().st_size
    retriever = dense = None  # frees the in-memory index
    gc.collect()
    before = _mem()
    start = time.perf_counter()
    mapped = DenseIndex.load(save_dir, SyntheticEncoder(), dense_cfg)
    out["mmap_load_s"] = time.perf_counter() - start
    after_load = _mem()
    mapped_hits = [mapped.search_arrays(v, 10)[0] for v in q_vecs]
    out["mmap"] = {
        "anon_growth_on_load_mb": after_load["anon_mb"] - before["anon_mb"],
        "file_growth_on_load_mb": after_load["file_mb"] - before["file_mb"],
        "same_hits_as_in_memory": mapped_hits == dense_hits,
        "recall@10": _recall(mapped_hits, exact),
        "dense": _latency(lambda i: mapped.search_arrays(q_vecs[i], 10), queries),
    }
    retriever = HybridRetriever(bm25=bm25, dense=mapped, config=RetrievalConfig())
    out["mmap"]["hybrid"] = _latency(
        lambda i: retriever.search_encoded(
            EncodedQuery(q_texts[i], bm25=bm25.encode_query(q_texts[i]), dense=q_vecs[i]),
            10,
            mode="hybrid",
        ),
        queries,
    )
    out["mmap"]["mem_after_queries"] = _mem()
    logger.info("mmap %s", out["mmap"])
    retriever = mapped = bm25 = None  # frees the unsharded indexes
    gc.collect()
    out["mem_after_free"] = _mem()

    out["peak"] = _mem()
    reference.write_text(json.dumps(hybrid_top))

    # --- sharded, in process, in a child process -----------------------------------------------
    if part == "all" and not skip_sharded:
        child = workdir / "sharded.json"
        args = [f"--{k}={v}" for k, v in settings.items()]
        args += [f"--nprobe={nprobe}", f"--refine-factor={refine_factor}", f"--shards={shards}"]
        subprocess.run(
            [sys.executable, "-m", "bench.scale", *args, "--part=sharded"]
            + [f"--workdir={workdir}", f"--json={child}"],
            check=True,
        )
        out["sharded"] = json.loads(child.read_text())["sharded"]
    return out


def _vectors(
    corpus: Corpus, workdir: Path, settings: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The chunk vectors [N, D] (a memory-mapped file) and topics [N], generated or, when the
    folder holds those of the same settings, reused (and True)."""
    vec_path, topic_path, meta = (
        workdir / "vectors.f32",
        workdir / "topics.npy",
        workdir / "vectors.json",
    )
    if meta.is_file() and json.loads(meta.read_text()) == settings:
        return np.load(vec_path, mmap_mode="r"), np.load(topic_path), True
    meta.unlink(missing_ok=True)
    n = corpus.n
    vectors = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n, D))
    topic_of = np.zeros(n, dtype=np.int32)
    for b, a, size in _batches(n):
        topic_of[a : a + size], vectors[a : a + size] = corpus.batch(b, size)
    vectors.flush()
    np.save(topic_path, topic_of)
    meta.write_text(json.dumps(settings))
    return vectors, topic_of, False


def _sharded(
    corpus: Corpus,
    vectors: np.ndarray,
    topic_of: np.ndarray,
    shards: int,
    dense_cfg: DenseConfig,
    q_texts: list[str],
    q_vecs: np.ndarray,
    exact: list[list[str]],
    hybrid_top: list[list[str]] | None,
) -> dict[str, Any]:
    """The same library over `shards` in-process shards: build, latency, recall."""
    n = len(vectors)
    per_shard = dense_cfg.model_copy(update={"ivfpq_threshold": int(n / shards * 0.95)})
    trained = _TrainTime()
    logging.getLogger("retrieval.dense").addHandler(trained)
    split = ShardedRetriever(
        dense_encoder=SyntheticEncoder(),
        config=RetrievalConfig(dense=per_shard),
        sharding=ShardingConfig(shards=shards),
    )
    analyzer = BM25Index()
    add_s = analyze_s = 0.0
    for b, a, size in _batches(n):
        texts = corpus.texts(b, topic_of[a : a + size])
        t0 = time.perf_counter()
        terms = analyzer.analyze(texts)
        t1 = time.perf_counter()
        split.add_analyzed(_ids(a, size), terms, np.asarray(vectors[a : a + size]))
        t2 = time.perf_counter()
        analyze_s, add_s = analyze_s + t1 - t0, add_s + t2 - t1
        del texts, terms
    t0 = time.perf_counter()
    split.compact()
    add_s += time.perf_counter() - t0
    out: dict[str, Any] = {
        "shards": shards,
        "analyze_s": analyze_s,
        "add_s (bm25 + dense, shards in parallel)": add_s,
        "dense_train_s": trained.seconds,
        "dense": split.dense_info(),
    }
    gc.collect()
    out["mem"] = _mem()
    encoded = [split.encode(t, v) for t, v in zip(q_texts, q_vecs, strict=True)]
    dense_hits = [[h.chunk_id for h in split.search_encoded(q, 10, mode="dense")] for q in encoded]
    out["recall@10"] = _recall(dense_hits, exact)
    hybrid = [[h.chunk_id for h in split.search_encoded(q, 10, mode="hybrid")] for q in encoded]
    if hybrid_top is not None:
        out["hybrid_top10_overlap_with_unsharded"] = _recall(hybrid, hybrid_top)
    lat = {}
    for mode in ("dense", "bm25", "hybrid", "hybrid-prf"):
        lat[mode] = _latency(
            lambda i, mode=mode: split.search_encoded(
                split.encode(q_texts[i], q_vecs[i]), 10, mode=mode
            ),
            len(q_texts),
        )
    out["latency"] = lat
    logger.info("sharded %s", out)
    split.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--topics", type=int, default=1000, help="mixture centres")
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--spread", type=float, default=0.85, help="spread around a centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--refine-factor", type=int, default=8)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--part", choices=["all", "single", "sharded"], default="all")
    parser.add_argument("--skip-sharded", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "folio-scale")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run(
        args.chunks,
        workdir=args.workdir,
        queries=args.queries,
        topics=args.topics,
        vocab=args.vocab,
        seed=args.seed,
        spread=args.spread,
        nprobe=args.nprobe,
        refine_factor=args.refine_factor,
        shards=args.shards,
        part=args.part,
        skip_sharded=args.skip_sharded,
    )
    text = json.dumps(result, indent=2)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
