"""Chunked PyTorch path of the fused sparse LM head: vocabulary tiles, logits never whole.

``log1p(relu(x))`` is monotone, so the max over the sequence is taken on the raw logits of each
vocabulary tile and the activation is applied to ``[B, V_tile]`` only (Sparton's reordering).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["sparse_lm_head_cpu"]


def sparse_lm_head_cpu(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    *,
    chunk_elems: int = 1 << 22,
) -> torch.Tensor:
    """``max_t log1p(relu(h_t W^T + b))`` over vocabulary tiles (inputs already validated).

    Args:
        hidden: ``[B, T, D]``.
        weight: ``[V, D]``.
        bias: ``[V]`` or ``None``.
        mask: ``[B, T]`` or ``None``.
        chunk_elems: bound on the ``[B * T, V_tile]`` logits of one tile.

    Returns:
        ``[B, V]`` in ``hidden.dtype``.
    """
    b, t, d = hidden.shape
    v = weight.shape[0]
    cd = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    h2 = hidden.reshape(b * t, d).to(cd)
    invalid = None if mask is None else (mask == 0).reshape(b, t, 1)
    out = torch.empty(b, v, dtype=cd, device=hidden.device)
    tile = max(64, chunk_elems // max(b * t, 1))
    for v0 in range(0, v, tile):
        v1 = min(v0 + tile, v)
        w = weight[v0:v1].to(cd)
        if bias is not None:
            logits = torch.addmm(bias[v0:v1].to(cd), h2, w.T)  # [B * T, V_tile]
        else:
            logits = h2 @ w.T
        logits = logits.view(b, t, v1 - v0)
        if invalid is not None:
            logits = logits.masked_fill(invalid, float("-inf"))
        out[:, v0:v1] = logits.amax(dim=1)
    return torch.log1p(torch.relu(out)).to(hidden.dtype)
