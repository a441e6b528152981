"""PyTorch path of a sparse decode step: gather the chosen keys once per key head, then attend."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["sparse_decode_cpu"]


def sparse_decode_cpu(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_idx: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Gather ``K`` keys/values per key head and attend (inputs already validated; any device).

    Returns:
        ``[B, H, 1, D]`` in ``q.dtype``.
    """
    b, h, _, d = q.shape
    hkv = k.shape[1]
    cd = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    idx = token_idx.long().unsqueeze(-1).expand(-1, -1, -1, d)  # [B, H_kv, K, D]
    kk = k.gather(2, idx).to(cd)
    vv = v.gather(2, idx).to(cd)
    qg = q.reshape(b, hkv, h // hkv, d).to(cd)  # the group's queries share the gathered keys
    probs = (qg @ kk.transpose(-1, -2) * scale).softmax(-1)  # [B, H_kv, g, K]
    return (probs @ vv).reshape(b, h, 1, d).to(q.dtype)
