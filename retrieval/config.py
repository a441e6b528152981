"""Retrieval settings: analysers, indexes, fusion and pseudo-relevance feedback.

Fusion and feedback defaults were tuned on `../shared/data/ir` for the best mean nDCG@10 of
hybrid-prf without SPLADE, which keeps a query within the latency budget on two cores (see
BENCHMARKS.md, "Retrieval (issue 3)", for the grids and the SPLADE alternative).
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field


class RetrievalMode(enum.StrEnum):
    """What answers a query; the names are those of `folio search --mode`."""

    BM25 = "bm25"
    SPLADE = "splade"
    DENSE = "dense"
    HYBRID = "hybrid"  # normalised interpolation of every available run
    HYBRID_PRF = "hybrid-prf"  # interpolate, feed back, run again, interpolate again


class Normalization(enum.StrEnum):
    """How a run's scores are put on a common scale before interpolation."""

    MINMAX = "minmax"
    ZSCORE = "zscore"
    RRF = "rrf"  # reciprocal-rank fusion: ranks, not scores


class NdcgGain(enum.StrEnum):
    """What a graded judgement is worth in nDCG (the two agree on binary judgements)."""

    LINEAR = "linear"  # the grade itself: trec_eval's ndcg_cut, which BEIR tables report
    EXPONENTIAL = "exponential"  # 2^grade - 1 (Burges et al.): favours the highest grades


class DenseIndexKind(enum.StrEnum):
    """FAISS index type."""

    AUTO = "auto"  # exact below `hnsw_threshold` items, HNSW up to `ivfpq_threshold`, then IVF-PQ
    FLAT = "flat"
    HNSW = "hnsw"
    IVFPQ = "ivfpq"  # IVF with product-quantised codes, candidates re-scored from a compact copy


class RefineKind(enum.StrEnum):
    """The copy of each vector that IVF-PQ candidates are re-scored with."""

    FP16 = "fp16"  # 2 bytes a dimension; scores within ~1e-3 of float32
    SQ8 = "sq8"  # 1 byte a dimension (per-dimension 8-bit scalar quantiser)


class ShardBackend(enum.StrEnum):
    """Where the shards of a `ShardedRetriever` run."""

    THREADS = "threads"  # in this process, one thread a shard
    RAY = "ray"  # one Ray actor a shard (the caller starts Ray, or Ray starts itself)


class BM25Config(BaseModel):
    """BM25 over analysed words (Lucene's BM25 formula)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k1: float = Field(default=0.9, ge=0.0, description="Term-frequency saturation.")
    b: float = Field(default=0.4, ge=0.0, le=1.0, description="Document-length normalisation.")
    stemmer: str | None = Field(
        default="english",
        description="Snowball stemmer language (PyStemmer), or None for no stemming.",
    )
    stopwords: str | None = Field(
        default="en", description="Stop-word list: 'en' (Lucene's English set) or None for none."
    )


class SpladeConfig(BaseModel):
    """Learned-sparse (SPLADE) index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_max_terms: int = Field(
        default=256, ge=1, description="Keep at most this many highest-weighted terms per chunk."
    )
    query_max_terms: int = Field(
        default=32, ge=1, description="Keep at most this many highest-weighted terms per query."
    )


class DenseConfig(BaseModel):
    """Dense embeddings in FAISS (inner product on L2-normalised vectors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: DenseIndexKind = Field(default=DenseIndexKind.AUTO, description="FAISS index type.")
    hnsw_threshold: int = Field(
        default=20_000,
        ge=1,
        description="With index='auto', switch from exact to HNSW at this size.",
    )
    hnsw_m: int = Field(default=32, ge=4, description="HNSW graph degree.")
    hnsw_ef_construction: int = Field(default=80, ge=8, description="HNSW build beam width.")
    hnsw_ef_search: int = Field(default=128, ge=8, description="HNSW search beam width.")
    ivfpq_threshold: int = Field(
        default=200_000,
        ge=1,
        description="Switch to IVF-PQ at this size, from HNSW with index='auto' and from exact "
        "with index='ivfpq' (the quantisers are trained once, then, on a sample); with 'auto' an "
        "IVF-PQ index stays one until it shrinks below half of this.",
    )
    ivfpq_nlist: int | None = Field(
        default=None,
        ge=1,
        description="IVF cells (k-means centroids); None: 4 * sqrt(n) at training time, at most "
        "one cell per 39 training vectors.",
    )
    ivfpq_m: int = Field(
        default=48,
        ge=1,
        description="PQ sub-quantisers (code bytes per vector at 8 bits); must divide the vector "
        "size (with index='auto' the largest divisor not above it is used).",
    )
    ivfpq_bits: int = Field(default=8, ge=4, le=12, description="Bits per PQ sub-quantiser code.")
    ivfpq_nprobe: int = Field(default=32, ge=1, description="IVF cells searched per query.")
    ivfpq_train_size: int = Field(
        default=100_000,
        ge=256,
        description="Vectors sampled (seeded) to train the IVF centroids and PQ codebooks.",
    )
    ivfpq_refine: RefineKind = Field(
        default=RefineKind.FP16,
        description="Compact copy of each vector that re-scores the PQ candidates (and that "
        "`vectors()` returns): fp16 (768 B at 384-d) or sq8 (384 B).",
    )
    ivfpq_refine_factor: int = Field(
        default=8,
        ge=1,
        description="Re-score the k * factor best PQ candidates of a search (at 1M synthetic "
        "384-d vectors, 8 gave recall@10 0.96 against exact search, 4 gave 0.87).",
    )
    mmap: bool = Field(
        default=True,
        description="Memory-map a saved IVF-PQ index on load (pages are read on demand and stay "
        "in the shared page cache) instead of reading it into process memory.",
    )


class ShardingConfig(BaseModel):
    """Chunks split over shards, each a BM25 and a dense index, searched in parallel."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shards: int = Field(default=2, ge=1, description="Number of shards S.")
    backend: ShardBackend = Field(
        default=ShardBackend.THREADS, description="Run shards on threads or Ray actors."
    )
    ray_cpus: float = Field(
        default=1.0,
        ge=0.0,
        description="CPUs Ray reserves for each shard actor (0 lets more shards than CPUs start).",
    )


class FusionConfig(BaseModel):
    """Interpolation of runs: s = sum_i w_i * norm(s_i) (weights need not sum to 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    normalization: Normalization = Field(
        default=Normalization.ZSCORE, description="Score normalisation before interpolation."
    )
    bm25_weight: float = Field(default=0.45, ge=0.0, description="Weight of the BM25 run.")
    splade_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="Weight of the SPLADE run; 0 leaves SPLADE out of the fused modes (and the "
        "library keeps no SPLADE index). 0.2, with min-max, BM25 0.3 and dense 0.5, is the best "
        "fusion with SPLADE on ../shared/data/ir (+0.007 nDCG@10) at ~15 ms more CPU per query.",
    )
    dense_weight: float = Field(default=0.55, ge=0.0, description="Weight of the dense run.")
    rrf_k: int = Field(default=60, ge=1, description="Rank offset of reciprocal-rank fusion.")


class PRFConfig(BaseModel):
    """Pseudo-relevance feedback from the top of the first fused run (Li et al., SIGIR 2022)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fb_docs: int = Field(
        default=5, ge=1, description="Feedback depth: top chunks of the fused run."
    )
    rm3_terms: int = Field(default=20, ge=1, description="RM3 expansion terms for BM25.")
    rm3_original_weight: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="RM3 weight of the original query (1 = no expansion).",
    )
    rocchio_alpha: float = Field(
        default=1.0, ge=0.0, description="Dense and SPLADE Rocchio: weight of the original query."
    )
    rocchio_beta: float = Field(
        default=0.5, ge=0.0, description="Dense and SPLADE Rocchio: weight of the feedback mean."
    )
    splade_terms: int = Field(
        default=64, ge=1, description="SPLADE Rocchio keeps this many highest-weighted query terms."
    )
    keep_first_pass: float = Field(
        default=1.0,
        ge=0.0,
        description="Weight of the first (pre-feedback) fused run in the final interpolation.",
    )


class RetrievalConfig(BaseModel):
    """Everything retrieval needs; pipeline passes it in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: RetrievalMode = Field(
        default=RetrievalMode.HYBRID_PRF, description="Default search mode."
    )
    depth: int = Field(
        default=100, ge=1, description="Candidates each run contributes to fusion (per query)."
    )
    parallel_encoding: bool = Field(
        default=True,
        description="Encode a query for SPLADE and the dense model at the same time (two threads).",
    )
    bm25: BM25Config = Field(default_factory=BM25Config, description="BM25 settings.")
    splade: SpladeConfig = Field(default_factory=SpladeConfig, description="SPLADE settings.")
    dense: DenseConfig = Field(default_factory=DenseConfig, description="Dense settings.")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="Fusion settings.")
    prf: PRFConfig = Field(default_factory=PRFConfig, description="Feedback settings.")

    def weight(self, run: str) -> float:
        """Fusion weight of a run: "bm25", "splade", "dense", or "first" (the first-pass fused
        run in the fusion after feedback)."""
        if run == "first":
            return self.prf.keep_first_pass
        f = self.fusion
        return {"bm25": f.bm25_weight, "splade": f.splade_weight, "dense": f.dense_weight}[run]
