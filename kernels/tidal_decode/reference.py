"""The spec of a sparse decode step: dense attention over the cache, masked to the chosen keys."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["sparse_decode_reference"]


def sparse_decode_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_idx: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Dense fp32 attention of one query step, restricted to ``token_idx``.

    Args:
        q: ``[B, H, 1, D]``.
        k: ``[B, H_kv, S, D]``.
        v: ``[B, H_kv, S, D]``.
        token_idx: ``[B, H_kv, K]`` kept positions (per key head).
        scale: softmax scale.

    Returns:
        ``[B, H, 1, D]`` in ``q.dtype``.
    """
    h, hkv, s = q.shape[1], k.shape[1], k.shape[2]
    keep = torch.zeros(*token_idx.shape[:2], s, dtype=torch.bool, device=q.device)
    keep.scatter_(-1, token_idx.long(), True)  # [B, H_kv, S]
    keep = keep.repeat_interleave(h // hkv, dim=1)[:, :, None, :]  # [B, H, 1, S]
    kf = k.float().repeat_interleave(h // hkv, dim=1)
    vf = v.float().repeat_interleave(h // hkv, dim=1)
    scores = (q.float() @ kf.transpose(-1, -2)) * scale  # [B, H, 1, S]
    probs = scores.masked_fill(~keep, float("-inf")).softmax(-1)
    return (probs @ vf).to(q.dtype)
