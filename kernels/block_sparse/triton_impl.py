"""Triton kernel for block-sparse causal attention (forward), FlashAttention-style online softmax.

One program handles one query block of one (batch, query head) and loops over the key blocks its
row of the block table selects. GQA maps query head ``h`` to key head ``h // (H // H_kv)`` and to
index head ``h // (H // H_idx)`` inside the kernel; no ``repeat_kv`` copy is made.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from .._utils import interpreting, next_power_of_2
from .index import BlockIndex

logger = logging.getLogger(__name__)

__all__ = ["block_sparse_attn_triton"]

_LOG2E = 1.4426950408889634


def _configs() -> list[triton.Config]:
    """Autotune space: one config under the interpreter (STYLE.md B5.3), a small grid on a GPU."""
    if interpreting():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=st) for w in (4, 8) for st in (1, 2, 3)]


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "BLOCK_N", "HAS_TOKEN_MASK", "HAS_WINDOW"])
@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    Out,
    BLOCK_IDX,
    BLOCK_COUNT,
    TOKEN_MASK,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_od,
    stride_ib,
    stride_ih,
    stride_in,
    stride_im,
    stride_cb,
    stride_ch,
    stride_cn,
    H,
    T,
    S,
    D,
    Q_PER_KV,
    Q_PER_IDX,
    WINDOW,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_TOKEN_MASK: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    i_hk = i_h // Q_PER_KV
    i_hi = i_h // Q_PER_IDX

    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, HEAD_DIM)
    m_m = o_m < T
    m_d = o_d < D
    q_pos = o_m + (S - T)

    p_q = (
        Q + i_b * stride_qb + i_h * stride_qh + o_m[:, None] * stride_qt + o_d[None, :] * stride_qd
    )
    # [BLOCK_M, HEAD_DIM]
    b_q = tl.load(p_q, mask=m_m[:, None] & m_d[None, :], other=0.0)

    p_k0 = K + i_b * stride_kb + i_hk * stride_kh
    p_v0 = V + i_b * stride_vb + i_hk * stride_vh
    p_idx = BLOCK_IDX + i_b * stride_ib + i_hi * stride_ih + i_m * stride_in
    p_tok = TOKEN_MASK + i_b * stride_ib + i_hi * stride_ih + i_m * stride_in
    n_blocks = tl.load(BLOCK_COUNT + i_b * stride_cb + i_hi * stride_ch + i_m * stride_cn)

    b_m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    b_l = tl.zeros([BLOCK_M], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for i in range(0, n_blocks):
        i_n = tl.load(p_idx + i * stride_im)
        o_s = i_n * BLOCK_N + o_n
        m_s = o_s < S
        # [BLOCK_N, HEAD_DIM]
        b_k = tl.load(
            p_k0 + o_s[:, None] * stride_ks + o_d[None, :] * stride_kd,
            mask=m_s[:, None] & m_d[None, :],
            other=0.0,
        )
        # [BLOCK_N, HEAD_DIM]
        b_v = tl.load(
            p_v0 + o_s[:, None] * stride_vs + o_d[None, :] * stride_vd,
            mask=m_s[:, None] & m_d[None, :],
            other=0.0,
        )
        # [BLOCK_M, BLOCK_N], log2 domain
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale
        m_vis = (o_s[None, :] <= q_pos[:, None]) & m_s[None, :]
        if HAS_WINDOW:
            m_vis = m_vis & ((q_pos[:, None] - o_s[None, :]) < WINDOW)
        if HAS_TOKEN_MASK:
            b_bits = tl.load(p_tok + i * stride_im)
            m_tok = ((b_bits >> o_n.to(tl.int64)) & 1) != 0
            m_vis = m_vis & m_tok[None, :]
        b_s = tl.where(m_vis, b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        # a row that has seen nothing yet keeps max -inf; shift by 0 so exp2 stays finite
        b_shift = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
        b_p = tl.math.exp2(b_s - b_shift[:, None])
        b_alpha = tl.math.exp2(b_m - b_shift)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(
            b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION
        )
        b_m = b_m_new

    b_o = tl.where(b_l[:, None] > 0, b_acc / tl.where(b_l > 0, b_l, 1.0)[:, None], 0.0)
    p_o = (
        Out
        + i_b * stride_ob
        + i_h * stride_oh
        + o_m[:, None] * stride_ot
        + o_d[None, :] * stride_od
    )
    tl.store(p_o, b_o.to(Out.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    scale: float,
    window: int | None,
) -> torch.Tensor:
    """Allocate the output and launch one program per (query block, batch * head)."""
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    o = torch.empty_like(q)
    bi, bc = index.block_idx, index.block_count
    tm = index.token_mask if index.token_mask is not None else bi  # dummy pointer when unused
    grid = (index.num_q_blocks, b * h)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _fwd_kernel[grid](
        q,
        k,
        v,
        o,
        bi,
        bc,
        tm,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *o.stride(),
        *bi.stride(),
        *bc.stride(),
        h,
        t,
        s,
        d,
        h // hkv,
        h // index.num_heads,
        window if window is not None else 0,
        scale * _LOG2E,
        BLOCK_M=index.block_size,
        BLOCK_N=index.block_size,
        HEAD_DIM=max(16, next_power_of_2(d)),
        HAS_TOKEN_MASK=index.token_mask is not None,
        HAS_WINDOW=window is not None,
        DOT_PRECISION=precision,
    )
    return o


def block_sparse_attn_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    *,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Run the Triton kernel (inputs already validated and contiguous): ``[B, H, T, D]`` out."""
    return _launch(q, k, v, index, scale, window)
