"""Fused sparse LM head (Sparton-style): Triton and chunked path vs the materialised reference."""

from __future__ import annotations

import pytest
import torch

from kernels import sparse_lm_head

ATOL = RTOL = 1e-4

SHAPES = [
    pytest.param(2, 19, 24, 70, id="B2-T19-D24-V70"),
    pytest.param(1, 33, 16, 37, id="B1-T33-D16-V37"),
]


def _inputs(b, t, d, v, *, with_bias=True, with_mask=True):
    hidden = torch.randn(b, t, d)
    weight = torch.randn(v, d) * 0.3
    bias = torch.randn(v) * 0.1 - 1.5 if with_bias else None  # negative: some terms stay zero
    mask = None
    if with_mask:
        mask = torch.ones(b, t, dtype=torch.long)
        mask[-1, t // 2 :] = 0  # right padding in the last row
    return hidden, weight, bias, mask


@pytest.mark.parametrize(("b", "t", "d", "v"), SHAPES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_fused_head_matches_reference(b, t, d, v, backend, with_bias):
    torch.manual_seed(0)
    hidden, weight, bias, mask = _inputs(b, t, d, v, with_bias=with_bias)
    ref = sparse_lm_head(hidden, weight, bias, mask, backend="reference")
    out = sparse_lm_head(hidden, weight, bias, mask, backend=backend)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    assert (ref >= 0).all()
    if with_bias:
        assert (ref == 0).any(), "ReLU must zero some terms"


def test_reference_is_splade_pooling():
    """The spec equals SPLADE's recipe: log1p(relu(logits)) * mask, max over tokens."""
    torch.manual_seed(0)
    hidden, weight, bias, mask = _inputs(2, 9, 8, 30)
    logits = hidden @ weight.T + bias
    splade = (torch.log1p(torch.relu(logits)) * mask.unsqueeze(-1)).max(dim=1).values
    torch.testing.assert_close(
        sparse_lm_head(hidden, weight, bias, mask, backend="reference"), splade
    )


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_padded_tokens_do_not_count_and_empty_rows_are_zero(backend):
    torch.manual_seed(0)
    hidden, weight, bias, _ = _inputs(2, 20, 16, 40)
    mask = torch.zeros(2, 20, dtype=torch.long)
    mask[0, :5] = 1
    out = sparse_lm_head(hidden, weight, bias, mask, backend=backend)
    alone = sparse_lm_head(hidden[:1, :5], weight, bias, None, backend="reference")
    torch.testing.assert_close(out[:1], alone, atol=ATOL, rtol=RTOL)
    assert out[1].abs().max() == 0


def test_chunked_path_with_tiny_tiles_matches():
    from kernels.sparton.cpu import sparse_lm_head_cpu

    torch.manual_seed(0)
    hidden, weight, bias, mask = _inputs(3, 11, 8, 500)
    ref = sparse_lm_head(hidden, weight, bias, mask, backend="reference")
    torch.testing.assert_close(
        sparse_lm_head_cpu(hidden, weight, bias, mask, chunk_elems=1), ref, atol=ATOL, rtol=RTOL
    )


def test_rejects_bad_shapes():
    hidden, weight, bias, mask = _inputs(2, 5, 8, 10)
    with pytest.raises(ValueError, match="weight"):
        sparse_lm_head(hidden, weight[:, :4])
    with pytest.raises(ValueError, match="bias"):
        sparse_lm_head(hidden, weight, bias[:3])
    with pytest.raises(ValueError, match="mask"):
        sparse_lm_head(hidden, weight, bias, mask[:, :3])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_triton_half_precision_on_gpu(dtype):
    torch.manual_seed(0)
    hidden, weight, bias, mask = (x.cuda() for x in _inputs(8, 256, 128, 30522))
    ref = sparse_lm_head(hidden, weight, bias, mask, backend="reference")
    out = sparse_lm_head(
        hidden.to(dtype), weight.to(dtype), bias.to(dtype), mask, backend="triton"
    ).float()
    rel_rmse = ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    print(f"max abs diff {(out - ref).abs().max().item():.3e}, rel rmse {rel_rmse:.3e}")
    assert rel_rmse < 5e-3
