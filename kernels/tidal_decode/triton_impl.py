"""Triton kernel of a sparse decode step: one program per (batch, query head), keys gathered by index."""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from .._utils import interpreting, next_power_of_2

logger = logging.getLogger(__name__)

__all__ = ["sparse_decode_triton"]

_LOG2E = 1.4426950408889634


def _configs() -> list[triton.Config]:
    """Autotune space: one config under the interpreter (STYLE.md B5.3)."""
    if interpreting():
        return [triton.Config({"BLOCK_K": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_K": bk}, num_warps=w) for bk in (64, 128) for w in (4, 8)]


@triton.autotune(configs=_configs(), key=["HEAD_DIM"])
@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    Idx,
    Out,
    stride_qb,
    stride_qh,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_vd,
    stride_ib,
    stride_ih,
    stride_ik,
    stride_ob,
    stride_oh,
    stride_od,
    H,
    N_SEL,
    D,
    Q_PER_KV,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    i_bh = tl.program_id(0)
    i_b = i_bh // H
    i_h = i_bh % H
    i_hk = i_h // Q_PER_KV
    o_d = tl.arange(0, HEAD_DIM)
    m_d = o_d < D
    # [HEAD_DIM]
    b_q = tl.load(Q + i_b * stride_qb + i_h * stride_qh + o_d * stride_qd, mask=m_d, other=0.0).to(
        tl.float32
    )
    b_m = tl.full([1], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([1], dtype=tl.float32)
    b_acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(N_SEL, BLOCK_K)):
        o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
        m_k = o_k < N_SEL
        # [BLOCK_K] positions of the kept keys
        b_pos = tl.load(
            Idx + i_b * stride_ib + i_hk * stride_ih + o_k * stride_ik, mask=m_k, other=0
        )
        p_k = (
            K
            + i_b * stride_kb
            + i_hk * stride_kh
            + b_pos[:, None] * stride_ks
            + o_d[None, :] * stride_kd
        )
        # [BLOCK_K, HEAD_DIM]
        b_k = tl.load(p_k, mask=m_k[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        p_v = (
            V
            + i_b * stride_vb
            + i_hk * stride_vh
            + b_pos[:, None] * stride_vs
            + o_d[None, :] * stride_vd
        )
        # [BLOCK_K, HEAD_DIM]
        b_v = tl.load(p_v, mask=m_k[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        # [BLOCK_K], log2 domain
        b_s = tl.sum(b_k * b_q[None, :], axis=1) * qk_scale
        b_s = tl.where(m_k, b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, axis=0))
        b_p = tl.math.exp2(b_s - b_m_new)
        b_alpha = tl.math.exp2(b_m - b_m_new)
        b_l = b_l * b_alpha + tl.sum(b_p, axis=0)
        b_acc = b_acc * b_alpha + tl.sum(b_p[:, None] * b_v, axis=0)
        b_m = b_m_new
    b_o = b_acc / b_l
    tl.store(
        Out + i_b * stride_ob + i_h * stride_oh + o_d * stride_od,
        b_o.to(Out.dtype.element_ty),
        mask=m_d,
    )


def _launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_idx: torch.Tensor, scale: float
) -> torch.Tensor:
    """Allocate ``[B, H, 1, D]`` and launch one program per (batch, query head)."""
    b, h, _, d = q.shape
    out = torch.empty_like(q)
    _fwd_kernel[(b * h,)](
        q,
        k,
        v,
        token_idx,
        out,
        q.stride(0),
        q.stride(1),
        q.stride(3),
        *k.stride(),
        *v.stride(),
        *token_idx.stride(),
        out.stride(0),
        out.stride(1),
        out.stride(3),
        h,
        token_idx.shape[-1],
        d,
        h // k.shape[1],
        scale * _LOG2E,
        HEAD_DIM=max(16, next_power_of_2(d)),
    )
    return out


def sparse_decode_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_idx: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Run the Triton kernel (inputs already validated and contiguous): ``[B, H, 1, D]``."""
    return _launch(q, k, v, token_idx, scale)
