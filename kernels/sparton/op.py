"""The one public entry point of the fused sparse LM head: validate, then dispatch."""

from __future__ import annotations

import logging

import torch

from .._utils import Backend, check_same_device, resolve_backend
from .cpu import sparse_lm_head_cpu
from .reference import sparse_lm_head_reference

logger = logging.getLogger(__name__)

__all__ = ["sparse_lm_head"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def sparse_lm_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    backend: Backend | str = Backend.AUTO,
    chunk_elems: int = 1 << 22,
) -> torch.Tensor:
    """SPLADE term weights without materialising the logits (Sparton-style fused LM head).

    ``out[b, v] = max over real tokens t of log1p(relu(hidden[b, t] @ weight[v] + bias[v]))``,
    0 when the sequence has no real token. Forward only (no autograd through the fast paths).

    Args:
        hidden: ``[B, T, D]`` final hidden states (after the MLM head's transform).
        weight: ``[V, D]`` decoder (vocabulary projection) weight.
        bias: ``[V]`` decoder bias, or ``None``.
        mask: ``[B, T]`` attention mask (nonzero = real token), or ``None`` for all real.
        backend: ``"auto"`` (Triton on CUDA or under ``TRITON_INTERPRET=1``, else the chunked
            PyTorch path), ``"triton"``, ``"torch"`` (chunked, any device) or ``"reference"``.
        chunk_elems: the torch path's bound on the logits of one vocabulary tile
            (``B * T * V_tile``, at least 64 columns).

    Returns:
        ``[B, V]`` in ``hidden.dtype``.

    Raises:
        ValueError: on shapes, dtypes or devices that do not fit.
        RuntimeError: when ``backend="triton"`` cannot run here.
    """
    if hidden.ndim != 3 or weight.ndim != 2:
        raise ValueError(
            f"hidden must be [B, T, D] and weight [V, D], got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    b, t, d = hidden.shape
    if weight.shape[1] != d:
        raise ValueError(f"weight {tuple(weight.shape)} must be [V, D={d}]")
    if t == 0 or weight.shape[0] == 0:
        raise ValueError(
            f"need at least one token and one vocabulary entry, got T={t}, V={weight.shape[0]}"
        )
    if hidden.dtype not in _DTYPES or weight.dtype != hidden.dtype:
        raise ValueError(
            f"hidden and weight must share a dtype among {_DTYPES}, got {hidden.dtype}, {weight.dtype}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [V={weight.shape[0]}], got {tuple(bias.shape)}")
    if mask is not None and mask.shape != (b, t):
        raise ValueError(f"mask must be [B={b}, T={t}], got {tuple(mask.shape)}")
    check_same_device(hidden=hidden, weight=weight, bias=bias, mask=mask)
    chosen = resolve_backend(backend, hidden, weight)
    hidden, weight = hidden.contiguous(), weight.contiguous()
    bias = bias.to(hidden.dtype).contiguous() if bias is not None else None
    mask = mask.to(torch.int32).contiguous() if mask is not None else None
    if chosen is Backend.REFERENCE:
        return sparse_lm_head_reference(hidden, weight, bias, mask)
    if chosen is Backend.TRITON:
        from .triton_impl import sparse_lm_head_triton

        return sparse_lm_head_triton(hidden, weight, bias, mask)
    return sparse_lm_head_cpu(hidden, weight, bias, mask, chunk_elems=chunk_elems)
