"""Retrieval: text in, `list[Hit]` out.

BM25 and learned sparse (`sparse`), dense + FAISS (`dense`), score fusion (`fusion`),
pseudo-relevance feedback (`prf`), their composition (`hybrid`), the same over shards
(`sharded`), and metrics (`evaluate`).
Encoders come in from `models` through the `DenseEncoder` / `SparseEncoder` protocols.
"""

from ._postings import TermWeights
from ._types import DenseEncoder, Hit, IndexMismatchError, SparseEncoder
from .config import (
    BM25Config,
    DenseConfig,
    DenseIndexKind,
    FusionConfig,
    NdcgGain,
    Normalization,
    PRFConfig,
    RefineKind,
    RetrievalConfig,
    RetrievalMode,
    ShardBackend,
    ShardingConfig,
    SpladeConfig,
)
from .dense import DenseIndex
from .evaluate import (
    BeirCollection,
    average_precision,
    evaluate_run,
    latency_summary,
    load_beir,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)
from .fusion import fuse, fuse_arrays, fuse_rrf, normalize
from .hybrid import EncodedChunks, EncodedQuery, HybridRetriever, SavedIndex, inspect_saved
from .prf import rm3, rocchio_dense, rocchio_sparse
from .sharded import ShardedRetriever, ShardQuery
from .sparse import BM25Index, BM25Stats, SpladeIndex

__all__ = [
    "BM25Config",
    "BM25Index",
    "BM25Stats",
    "BeirCollection",
    "DenseConfig",
    "DenseEncoder",
    "DenseIndex",
    "DenseIndexKind",
    "EncodedChunks",
    "EncodedQuery",
    "FusionConfig",
    "Hit",
    "HybridRetriever",
    "IndexMismatchError",
    "NdcgGain",
    "Normalization",
    "PRFConfig",
    "RefineKind",
    "RetrievalConfig",
    "RetrievalMode",
    "SavedIndex",
    "ShardBackend",
    "ShardQuery",
    "ShardedRetriever",
    "ShardingConfig",
    "SparseEncoder",
    "SpladeConfig",
    "SpladeIndex",
    "TermWeights",
    "average_precision",
    "evaluate_run",
    "fuse",
    "fuse_arrays",
    "fuse_rrf",
    "inspect_saved",
    "latency_summary",
    "load_beir",
    "ndcg_at_k",
    "normalize",
    "recall_at_k",
    "reciprocal_rank",
    "rm3",
    "rocchio_dense",
    "rocchio_sparse",
]
