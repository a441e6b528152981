"""Fused sparse LM head for learned-sparse (SPLADE) encoding: reference, Triton, chunked CPU path."""

from .op import sparse_lm_head

__all__ = ["sparse_lm_head"]
