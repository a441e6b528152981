"""Plain data that crosses the retrieval boundary, and the encoder protocols retrieval needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved chunk. Higher scores are better; scales differ between retrievers."""

    chunk_id: str
    score: float


@runtime_checkable
class DenseEncoder(Protocol):
    """Texts to L2-normalised float32 vectors (`models.encoders.MiniLMEncoder` is one)."""

    @property
    def name(self) -> str:
        """Identifies the model; an index built with another encoder refuses to load."""
        ...

    @property
    def dim(self) -> int:
        """Vector size D."""
        ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Returns: float32 [N, D], rows L2-normalised."""
        ...

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Returns: float32 [N, D], rows L2-normalised."""
        ...


@runtime_checkable
class SparseEncoder(Protocol):
    """Texts to non-negative term weights over a fixed vocabulary (SPLADE)."""

    @property
    def name(self) -> str:
        """Identifies the model; an index built with another encoder refuses to load."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of columns V of the returned matrices."""
        ...

    def encode_queries(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Returns: float32 CSR [N, V] of non-negative weights."""
        ...

    def encode_documents(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Returns: float32 CSR [N, V] of non-negative weights."""
        ...


class IndexMismatchError(ValueError):
    """A saved index does not match the encoder or settings it is loaded with."""
