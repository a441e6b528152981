"""The one public entry point of a sparse decode step: validate, then dispatch."""

from __future__ import annotations

import logging

import torch

from .._utils import Backend, check_same_device, resolve_backend
from .cpu import sparse_decode_cpu
from .reference import sparse_decode_reference

logger = logging.getLogger(__name__)

__all__ = ["sparse_decode"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def sparse_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    token_idx: torch.Tensor,
    *,
    scale: float | None = None,
    backend: Backend | str = Backend.AUTO,
) -> torch.Tensor:
    """One decode step attending only to chosen cache positions (TidalDecode's sparse layers).

    With ``token_idx`` holding every position this equals the dense step (SDPA over the cache).

    Args:
        q: ``[B, H, 1, D]`` the step's queries.
        k: ``[B, H_kv, S, D]`` cached keys; query head ``h`` reads key head ``h // (H // H_kv)``.
        v: ``[B, H_kv, S, D]`` cached values.
        token_idx: ``[B, H_kv, K]`` integer positions in ``[0, S)``, distinct per row (from
            ``select_decode_tokens`` at a selection layer, reused by the following layers).
        scale: softmax scale, default ``D ** -0.5``.
        backend: ``"auto"`` (Triton on CUDA or under ``TRITON_INTERPRET=1``, else PyTorch),
            ``"triton"``, ``"torch"`` or ``"reference"``.

    Returns:
        ``[B, H, 1, D]`` in ``q.dtype``.

    Raises:
        ValueError: on shapes, dtypes, devices or positions that do not fit.
        RuntimeError: when ``backend="triton"`` cannot run here.
    """
    if q.ndim != 4 or q.shape[2] != 1 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(
            f"q must be [B, H, 1, D], k and v [B, H_kv, S, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, _, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    if k.shape[0] != b or k.shape[3] != d or h % hkv:
        raise ValueError(
            f"k {tuple(k.shape)} does not fit q {tuple(q.shape)} (batch, head dim, H % H_kv)"
        )
    if not 1 <= d <= 256:
        raise ValueError(f"head dim D={d} unsupported: use 1 <= D <= 256")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype among {_DTYPES}")
    if token_idx.ndim != 3 or token_idx.shape[:2] != (b, hkv) or token_idx.shape[2] == 0:
        raise ValueError(
            f"token_idx must be [B={b}, H_kv={hkv}, K>0], got {tuple(token_idx.shape)}"
        )
    if token_idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"token_idx must be int32 or int64, got {token_idx.dtype}")
    if int(token_idx.min()) < 0 or int(token_idx.max()) >= s:
        raise ValueError(f"token_idx positions must lie in [0, S={s})")
    check_same_device(q=q, k=k, v=v, token_idx=token_idx)
    chosen = resolve_backend(backend, q, k, v)
    sc = d**-0.5 if scale is None else float(scale)
    q, k, v, token_idx = q.contiguous(), k.contiguous(), v.contiguous(), token_idx.contiguous()
    if chosen is Backend.REFERENCE:
        return sparse_decode_reference(q, k, v, token_idx, scale=sc)
    if chosen is Backend.TRITON:
        from .triton_impl import sparse_decode_triton

        return sparse_decode_triton(q, k, v, token_idx, scale=sc)
    return sparse_decode_cpu(q, k, v, token_idx, scale=sc)
