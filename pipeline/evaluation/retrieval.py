"""`folio eval retrieval`: every retrieval mode on a BEIR-layout collection, in one table.

Builds the encoders the requested modes need, indexes the corpus (or loads the index cached by an
earlier run), runs each judged query one at a time per mode, and returns
`{"collection", "queries", "ndcg_gain", "modes": {mode: {"ndcg@10", "map", "recall@100", "mrr",
"p50_ms", "p95_ms"}}}`. nDCG takes trec_eval's linear gains unless told otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models.config import EncoderConfig
from models.encoders import MiniLMEncoder, SpladeEncoder
from pipeline.library.encoders import make_encoders
from retrieval import (
    BeirCollection,
    DenseConfig,
    DenseIndexKind,
    HybridRetriever,
    NdcgGain,
    RetrievalConfig,
    RetrievalMode,
    evaluate_run,
    latency_summary,
    load_beir,
)

logger = logging.getLogger(__name__)

__all__ = ["build_retriever", "evaluate_retrieval"]

_ALL_MODES: tuple[RetrievalMode, ...] = tuple(RetrievalMode)


def _parse_modes(modes: Sequence[str | RetrievalMode] | None) -> list[RetrievalMode]:
    if not modes:
        return list(_ALL_MODES)
    out = []
    for m in modes:
        try:
            out.append(RetrievalMode(m))
        except ValueError as exc:
            raise ValueError(
                f"unknown mode {m!r}; use any of {[x.value for x in _ALL_MODES]}"
            ) from exc
    return out


def _dense_key(config: DenseConfig, n: int) -> str:
    """What decides the dense index built for n chunks: its kind, and HNSW's build settings."""
    kind = config.index
    if kind == DenseIndexKind.AUTO:
        kind = DenseIndexKind.HNSW if n >= config.hnsw_threshold else DenseIndexKind.FLAT
    if kind == DenseIndexKind.FLAT:
        return "flat"
    return f"hnsw:{config.hnsw_m}:{config.hnsw_ef_construction}"


def build_retriever(
    collection: BeirCollection,
    *,
    dense_encoder: MiniLMEncoder | None,
    sparse_encoder: SpladeEncoder | None,
    retrieval_config: RetrievalConfig,
    cache_dir: Path | None = None,
    corpus_key: str = "",
) -> HybridRetriever:
    """Index a collection's corpus, or load the index an earlier call cached under `cache_dir`."""
    folder = None
    if cache_dir is not None:
        c = retrieval_config
        key = "|".join(
            [
                corpus_key,
                str(len(collection.corpus)),
                dense_encoder.name if dense_encoder else "-",
                sparse_encoder.name if sparse_encoder else "-",
                c.bm25.model_dump_json(include={"stemmer", "stopwords"}),
                str(c.splade.doc_max_terms),
                _dense_key(c.dense, len(collection.corpus)),
            ]
        )
        folder = (
            Path(cache_dir) / f"{collection.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        )
        if (folder / "retriever.json").is_file():
            logger.info("loading cached index %s", folder)
            return HybridRetriever.load(
                folder,
                dense_encoder=dense_encoder,
                sparse_encoder=sparse_encoder,
                config=retrieval_config,
            )
    start = time.perf_counter()
    retriever = HybridRetriever.create(
        dense_encoder=dense_encoder, sparse_encoder=sparse_encoder, config=retrieval_config
    )
    retriever.add(collection.corpus.items())
    logger.info("indexed %d documents in %.1f s", len(retriever), time.perf_counter() - start)
    if folder is not None:
        retriever.save(folder)
    return retriever


def evaluate_retrieval(
    directory: Path,
    *,
    modes: Sequence[str | RetrievalMode] | None = None,
    retrieval_config: RetrievalConfig | None = None,
    encoder_config: EncoderConfig | None = None,
    cache_dir: Path | None = None,
    k: int = 1000,
    ndcg_gain: NdcgGain | str = NdcgGain.LINEAR,
) -> dict[str, Any]:
    """Evaluate retrieval modes on one BEIR-layout collection.

    Args:
        directory: Folder with corpus.jsonl, queries.jsonl and qrels.tsv.
        modes: Mode names (default: all five).
        retrieval_config: Retrieval settings (defaults when None).
        encoder_config: Encoder settings (defaults when None).
        cache_dir: If given, indexes are saved there and reused by later calls.
        k: Ranking depth per query (MAP and MRR are computed to this depth).
        ndcg_gain: nDCG's gain of a grade: `linear` (trec_eval) or `exponential` (2^grade - 1).

    Returns:
        `{"collection": name, "queries": N, "ndcg_gain": gain, "modes": {mode: {"ndcg@10", "map",
        "recall@100", "mrr", "p50_ms", "p95_ms"}}}`; latency is per query, encoding included.

    Raises:
        FileNotFoundError: If a collection file is missing.
        ValueError: On an unknown mode or gain.
    """
    mode_list = _parse_modes(modes)
    try:
        ndcg_gain = NdcgGain(ndcg_gain)
    except ValueError:
        raise ValueError(
            f"unknown nDCG gain {ndcg_gain!r}; use one of {[g.value for g in NdcgGain]}"
        ) from None
    retrieval_config = retrieval_config or RetrievalConfig()
    collection = load_beir(Path(directory))
    queries = collection.judged_queries()
    dense_encoder, sparse_encoder = make_encoders(mode_list, retrieval_config, encoder_config)
    corpus_key = hashlib.sha256((Path(directory) / "corpus.jsonl").read_bytes()).hexdigest()
    retriever = build_retriever(
        collection,
        dense_encoder=dense_encoder,
        sparse_encoder=sparse_encoder,
        retrieval_config=retrieval_config,
        cache_dir=cache_dir,
        corpus_key=corpus_key,
    )
    result: dict[str, Any] = {
        "collection": collection.name,
        "queries": len(queries),
        "ndcg_gain": ndcg_gain.value,
        "modes": {},
    }
    for mode in mode_list:
        if queries:
            retriever.search(next(iter(queries.values())), k, mode=mode)  # warm-up: model loads
        run, times = {}, []
        for qid, text in queries.items():
            start = time.perf_counter()
            run[qid] = retriever.search(text, k, mode=mode)
            times.append((time.perf_counter() - start) * 1000.0)
        metrics = evaluate_run(run, collection.qrels, gain=ndcg_gain)
        result["modes"][mode.value] = {**metrics, **latency_summary(times)}
        logger.info("%s %s: %s", collection.name, mode.value, result["modes"][mode.value])
    return result
