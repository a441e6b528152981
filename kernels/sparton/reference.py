"""The spec of the fused sparse LM head: SPLADE's ``max_t log1p(relu(h_t W^T + b))``, materialised."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["sparse_lm_head_reference"]


def sparse_lm_head_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Materialise the ``[B, T, V]`` logits, activate, mask, max over the sequence (fp32).

    Args:
        hidden: ``[B, T, D]``.
        weight: ``[V, D]``.
        bias: ``[V]`` or ``None``.
        mask: ``[B, T]`` (nonzero = real token) or ``None``.

    Returns:
        ``[B, V]`` in ``hidden.dtype``; a row without real tokens is all zeros.
    """
    logits = hidden.float() @ weight.float().T  # [B, T, V]
    if bias is not None:
        logits = logits + bias.float()
    act = torch.log1p(torch.relu(logits))
    if mask is not None:
        act = act * (mask != 0).unsqueeze(-1)
    return act.amax(dim=1).to(hidden.dtype)
