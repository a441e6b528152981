"""Sparse decoding (TidalDecode): token selection, reference, Triton, PyTorch path, dispatcher."""

from .index import select_decode_tokens
from .op import sparse_decode

__all__ = ["select_decode_tokens", "sparse_decode"]
