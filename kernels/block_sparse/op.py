"""The one public entry point for block-sparse attention: validate, then dispatch."""

from __future__ import annotations

import logging

import torch

from .._utils import Backend, check_same_device, resolve_backend
from .cpu import block_sparse_attn_cpu
from .index import BlockIndex
from .reference import block_sparse_attn_reference

logger = logging.getLogger(__name__)

__all__ = ["block_sparse_attn"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256


def _validate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: BlockIndex, window: int | None
) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v must be [B, H, T, D], [B, H_kv, S, D], [B, H_kv, S, D]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    b, h, t, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [B={b}, H_kv, S, D={d}]"
        )
    hkv, s = k.shape[1], k.shape[2]
    if hkv == 0 or h % hkv:
        raise ValueError(f"H={h} query heads must be a multiple of H_kv={hkv} key heads")
    if not 1 <= d <= _MAX_HEAD_DIM:
        raise ValueError(f"head dim D={d} unsupported: use 1 <= D <= {_MAX_HEAD_DIM}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v must share one dtype among {_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if s < t:
        raise ValueError(f"need S >= T (the keys include the queries), got T={t}, S={s}")
    if (index.q_len, index.kv_len) != (t, s):
        raise ValueError(
            f"index was built for T={index.q_len}, S={index.kv_len}, got T={t}, S={s}; rebuild it"
        )
    hi = index.num_heads
    if h % hi or hi % hkv:
        raise ValueError(
            f"index heads H_idx={hi} must divide H={h} and be a multiple of H_kv={hkv}"
        )
    nq = -(-t // index.block_size)
    if index.block_idx.shape[:3] != (b, hi, nq) or index.block_count.shape != (b, hi, nq):
        raise ValueError(
            f"index tables must be [B={b}, H_idx={hi}, NQ={nq}, ...], got block_idx "
            f"{tuple(index.block_idx.shape)} and block_count {tuple(index.block_count.shape)}"
        )
    if index.block_idx.dtype != torch.int32 or index.block_count.dtype != torch.int32:
        raise ValueError(
            "index.block_idx and index.block_count must be int32 (build them with kernels' builders)"
        )
    if index.token_mask is not None and (
        index.token_mask.dtype != torch.int64 or index.block_size > 64
    ):
        raise ValueError("index.token_mask must be int64 bits with block_size <= 64")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    check_same_device(
        q=q,
        k=k,
        v=v,
        block_idx=index.block_idx,
        block_count=index.block_count,
        token_mask=index.token_mask,
    )


def block_sparse_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    *,
    scale: float | None = None,
    window: int | None = None,
    backend: Backend | str = Backend.AUTO,
) -> torch.Tensor:
    """Block-sparse causal attention over the key blocks an index selects.

    Causal semantics are bottom-right aligned (flash-attention): with ``T`` queries and ``S >= T``
    keys, query ``i`` sits at position ``S - T + i`` and sees key ``s`` iff ``s <= S - T + i``, the
    block table selects it, its token bit is set (when the index carries token bits), and, with a
    sliding ``window``, ``S - T + i - s < window``. A query that sees no key returns zeros.

    Args:
        q: ``[B, H, T, D]`` queries, fp32/fp16/bf16, ``D <= 256``.
        k: ``[B, H_kv, S, D]`` keys; query head ``h`` reads key head ``h // (H // H_kv)``.
        v: ``[B, H_kv, S, D]`` values.
        index: ``BlockIndex`` for ``(T, S)`` with ``H_idx`` heads (``H_kv | H_idx | H``); query head
            ``h`` uses index head ``h // (H // H_idx)``.
        scale: softmax scale, default ``D ** -0.5``.
        window: optional sliding window (``None``: full causal attention).
        backend: ``"auto"`` (Triton on CUDA or under ``TRITON_INTERPRET=1``, else the fast PyTorch
            gather path), ``"triton"`` (raises if it cannot run), ``"torch"`` (gather path, any
            device), or ``"reference"`` (dense fp32 spec).

    Returns:
        ``[B, H, T, D]`` contiguous, in ``q.dtype``.

    Raises:
        ValueError: on shapes, dtypes, devices or an index that do not fit.
        RuntimeError: when ``backend="triton"`` cannot run here.
    """
    _validate(q, k, v, index, window)
    chosen = resolve_backend(backend, q, k, v)
    sc = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if chosen is Backend.REFERENCE:
        return block_sparse_attn_reference(q, k, v, index, scale=sc, window=window)
    if chosen is Backend.TRITON:
        from .triton_impl import block_sparse_attn_triton

        return block_sparse_attn_triton(q, k, v, index, scale=sc, window=window)
    return block_sparse_attn_cpu(q, k, v, index, scale=sc, window=window)
