"""Block-sparse causal attention: block tables, pattern builders, reference, Triton, CPU, dispatcher."""

from .index import (
    BLOCK_SIZE,
    BlockIndex,
    attention_block_mass,
    attention_mass_kept,
    block_mask_to_index,
    build_dense_index,
    build_flexprefill_index,
    build_hisa_index,
    build_vertical_slash_index,
    build_window_index,
    dense_mask,
)
from .op import block_sparse_attn

__all__ = [
    "BLOCK_SIZE",
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
]
