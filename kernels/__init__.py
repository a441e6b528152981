"""kernels: tensors in, tensors out, no project imports.

Each op has a plain PyTorch reference (the spec), a Triton kernel, a fast PyTorch/CPU path and
one dispatcher (STYLE.md B5):

- ``block_sparse_attn``: block-sparse causal attention for long prefills, with the block-table
  builders (MInference vertical-slash, FlexPrefill, HISA two-stage, sliding window, dense).
- ``sparse_decode`` / ``select_decode_tokens``: TidalDecode-style sparse decode step.
- ``sparse_lm_head``: Sparton-style fused ``max_t log1p(relu(h W^T + b))`` for SPLADE encoders.
"""

from ._utils import Backend
from .block_sparse import (
    BLOCK_SIZE,
    BlockIndex,
    attention_block_mass,
    attention_mass_kept,
    block_mask_to_index,
    block_sparse_attn,
    build_dense_index,
    build_flexprefill_index,
    build_hisa_index,
    build_vertical_slash_index,
    build_window_index,
    dense_mask,
)
from .sparton import sparse_lm_head
from .tidal_decode import select_decode_tokens, sparse_decode

__all__ = [
    "BLOCK_SIZE",
    "Backend",
    "BlockIndex",
    "attention_block_mass",
    "attention_mass_kept",
    "block_mask_to_index",
    "block_sparse_attn",
    "build_dense_index",
    "build_flexprefill_index",
    "build_hisa_index",
    "build_vertical_slash_index",
    "build_window_index",
    "dense_mask",
    "select_decode_tokens",
    "sparse_decode",
    "sparse_lm_head",
]
