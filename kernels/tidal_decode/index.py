"""Token selection for sparse decoding (TidalDecode): the top keys of one query step. Pure torch."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["select_decode_tokens"]


def select_decode_tokens(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    budget: int,
    sink_tokens: int = 4,
    local_tokens: int = 64,
    scale: float | None = None,
) -> torch.Tensor:
    """The keys a decode step attends to: sink, recent, and the top of the attention scores.

    TidalDecode runs full attention at a few selection layers, keeps the positions with the
    highest scores, and lets the following layers attend to those positions only. One selection is
    made per key head (the softmax probabilities of its query heads are summed), so GQA groups
    gather each key once.

    Args:
        q: ``[B, H, 1, D]`` the step's queries.
        k: ``[B, H_kv, S, D]`` the cached keys (the new token's included).
        budget: positions kept per key head (``min(budget, S)``); make it larger than
            ``sink_tokens + local_tokens``, or only (some of) the forced positions are kept.
        sink_tokens: first positions always kept.
        local_tokens: most recent positions always kept.
        scale: softmax scale, default ``D ** -0.5``.

    Returns:
        ``[B, H_kv, K]`` int64 positions, ascending, ``K = min(budget, S)``.
    """
    if q.ndim != 4 or k.ndim != 4 or q.shape[2] != 1:
        raise ValueError(
            f"q must be [B, H, 1, D] and k [B, H_kv, S, D], got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    b, h, _, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    if h % hkv:
        raise ValueError(f"H={h} must be a multiple of H_kv={hkv}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    sc = d**-0.5 if scale is None else scale
    qg = q.float().reshape(b, hkv, h // hkv, d)
    probs = (qg @ k.float().transpose(-1, -2) * sc).softmax(-1).sum(2)  # [B, H_kv, S]
    pos = torch.arange(s, device=q.device)
    forced = (pos < sink_tokens) | (pos >= s - local_tokens)
    score = probs.masked_fill(forced, float("inf"))
    kk = min(budget, s)
    return score.topk(kk, dim=-1).indices.sort(-1).values
