"""Triton kernel of the fused sparse LM head (Sparton-style), forward only.

One program owns a tile of ``BLOCK_V`` vocabulary entries of one sequence: it streams the sequence
in ``BLOCK_T`` token tiles, accumulates ``h W^T`` over ``BLOCK_D`` slices, keeps a running max of
the raw logits, and applies ``log1p(relu(.))`` once at the end. The ``[T, V]`` logits never leave
registers.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from .._utils import interpreting

logger = logging.getLogger(__name__)

__all__ = ["sparse_lm_head_triton"]


def _configs() -> list[triton.Config]:
    """Autotune space: one config under the interpreter (STYLE.md B5.3)."""
    if interpreting():
        return [
            triton.Config({"BLOCK_V": 32, "BLOCK_T": 16, "BLOCK_D": 16}, num_warps=4, num_stages=1)
        ]
    return [
        triton.Config({"BLOCK_V": bv, "BLOCK_T": bt, "BLOCK_D": 64}, num_warps=w, num_stages=st)
        for bv in (64, 128)
        for bt in (32, 64)
        for w in (4, 8)
        for st in (2, 3)
    ]


@triton.autotune(configs=_configs(), key=["D", "HAS_BIAS", "HAS_MASK"])
@triton.jit
def _fwd_kernel(
    Hid,
    W,
    Bias,
    Mask,
    Out,
    stride_hb,
    stride_ht,
    stride_hd,
    stride_wv,
    stride_wd,
    stride_mb,
    stride_mt,
    stride_ob,
    stride_ov,
    T,
    D,
    V,
    HAS_BIAS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_v = tl.program_id(0)
    i_b = tl.program_id(1)
    o_v = i_v * BLOCK_V + tl.arange(0, BLOCK_V)
    m_v = o_v < V
    if HAS_BIAS:
        # [BLOCK_V]
        b_bias = tl.load(Bias + o_v, mask=m_v, other=0.0).to(tl.float32)
    b_max = tl.full([BLOCK_V], float("-inf"), dtype=tl.float32)
    for i_t in range(0, tl.cdiv(T, BLOCK_T)):
        o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
        m_t = o_t < T
        b_acc = tl.zeros([BLOCK_T, BLOCK_V], dtype=tl.float32)
        for i_d in range(0, tl.cdiv(D, BLOCK_D)):
            o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
            m_d = o_d < D
            p_h = Hid + i_b * stride_hb + o_t[:, None] * stride_ht + o_d[None, :] * stride_hd
            # [BLOCK_T, BLOCK_D]
            b_h = tl.load(p_h, mask=m_t[:, None] & m_d[None, :], other=0.0)
            p_w = W + o_v[None, :] * stride_wv + o_d[:, None] * stride_wd
            # [BLOCK_D, BLOCK_V]
            b_w = tl.load(p_w, mask=m_d[:, None] & m_v[None, :], other=0.0)
            b_acc += tl.dot(b_h, b_w, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            b_acc += b_bias[None, :]
        m_keep = m_t
        if HAS_MASK:
            # [BLOCK_T]
            b_m = tl.load(Mask + i_b * stride_mb + o_t * stride_mt, mask=m_t, other=0)
            m_keep = m_keep & (b_m != 0)
        b_acc = tl.where(m_keep[:, None], b_acc, float("-inf"))
        b_max = tl.maximum(b_max, tl.max(b_acc, 0))
    # log1p(relu(max)): relu(-inf) = 0 for a sequence without real tokens
    b_out = tl.log(1.0 + tl.maximum(b_max, 0.0))
    tl.store(Out + i_b * stride_ob + o_v * stride_ov, b_out.to(Out.dtype.element_ty), mask=m_v)


def _launch(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    """Allocate ``[B, V]`` and launch one program per (vocabulary tile, sequence)."""
    b, t, d = hidden.shape
    v = weight.shape[0]
    out = hidden.new_empty(b, v)
    mask_arg = mask if mask is not None else hidden  # dummy pointer when unused
    mask_strides = mask.stride() if mask is not None else (0, 0)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(v, meta["BLOCK_V"]), b)

    _fwd_kernel[grid](
        hidden,
        weight,
        bias if bias is not None else weight,
        mask_arg,
        out,
        *hidden.stride(),
        *weight.stride(),
        *mask_strides,
        *out.stride(),
        t,
        d,
        v,
        HAS_BIAS=bias is not None,
        HAS_MASK=mask is not None,
        DOT_PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32",
    )
    return out


def sparse_lm_head_triton(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    """Run the Triton kernel (inputs already validated and contiguous): ``[B, V]``."""
    return _launch(hidden, weight, bias, mask)
