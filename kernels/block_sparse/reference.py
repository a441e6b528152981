"""The spec of block-sparse attention: dense fp32 attention under the mask the block index means."""

from __future__ import annotations

import logging

import torch

from .index import BlockIndex, dense_mask

logger = logging.getLogger(__name__)

__all__ = ["block_sparse_attn_reference"]


def block_sparse_attn_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    *,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Dense masked attention: what every fast path must equal.

    Args:
        q: ``[B, H, T, D]``.
        k: ``[B, H_kv, S, D]``.
        v: ``[B, H_kv, S, D]``.
        index: block table with ``H_idx`` heads.
        scale: softmax scale.
        window: optional sliding window (``p - window < s <= p``).

    Returns:
        ``[B, H, T, D]`` in ``q.dtype``; a query that sees no key gets zeros.
    """
    h, hkv, hi = q.shape[1], k.shape[1], index.num_heads
    # mask: [B, H, T, S], built from the same index the kernels consume
    mask = dense_mask(index, window=window).repeat_interleave(h // hi, dim=1)
    kf = k.float().repeat_interleave(h // hkv, dim=1)  # [B, H, S, D]
    vf = v.float().repeat_interleave(h // hkv, dim=1)
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale  # [B, H, T, S]
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows without a visible key
    return torch.matmul(probs, vf).to(q.dtype)
