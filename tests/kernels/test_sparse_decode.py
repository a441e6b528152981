"""Sparse decode step (TidalDecode): kernel and PyTorch path vs the dense-masked reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import select_decode_tokens, sparse_decode

ATOL = RTOL = 1e-4

SHAPES = [
    pytest.param(1, 4, 2, 77, 64, id="B1-H4-KV2-S77-D64"),
    pytest.param(2, 2, 1, 130, 32, id="B2-H2-KV1-S130-D32"),
    pytest.param(1, 4, 1, 63, 256, id="B1-H4-KV1-S63-D256"),
]


def _qkv(b, h, hkv, s, d):
    return torch.randn(b, h, 1, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)


@pytest.mark.parametrize(("b", "h", "hkv", "s", "d"), SHAPES)
@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_all_positions_equal_the_dense_step(b, h, hkv, s, d, backend):
    torch.manual_seed(0)
    q, k, v = _qkv(b, h, hkv, s, d)
    every = torch.arange(s).expand(b, hkv, s)
    out = sparse_decode(q, k, v, every, backend=backend)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True), atol=ATOL, rtol=RTOL
    )


@pytest.mark.parametrize(("b", "h", "hkv", "s", "d"), SHAPES)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_selected_positions_match_reference(b, h, hkv, s, d, backend):
    torch.manual_seed(0)
    q, k, v = _qkv(b, h, hkv, s, d)
    idx = select_decode_tokens(q, k, budget=20, sink_tokens=2, local_tokens=5)
    ref = sparse_decode(q, k, v, idx, backend="reference")
    torch.testing.assert_close(
        sparse_decode(q, k, v, idx, backend=backend), ref, atol=ATOL, rtol=RTOL
    )


def test_selection_is_sorted_in_range_within_budget_and_keeps_sink_and_recent():
    torch.manual_seed(0)
    q, k, _ = _qkv(2, 4, 2, 300, 32)
    idx = select_decode_tokens(q, k, budget=40, sink_tokens=3, local_tokens=10)
    assert idx.shape == (2, 2, 40)
    assert (idx[..., 1:] > idx[..., :-1]).all()
    assert idx.min() >= 0 and idx.max() < 300
    for pos in [0, 1, 2, *range(290, 300)]:
        assert (idx == pos).any(-1).all()
    assert select_decode_tokens(q, k, budget=1000).shape[-1] == 300


def test_selection_finds_the_attended_key_and_reuse_across_layers_stays_close():
    """A later layer whose attention is peaked at the same positions loses almost nothing."""
    torch.manual_seed(0)
    d, s = 64, 400
    q, k, v = _qkv(1, 2, 1, s, d)
    k[0, 0, 123] = q[0, 0, 0] * 2.0  # a key the selection layer's queries love
    idx = select_decode_tokens(q, k, budget=96, sink_tokens=4, local_tokens=16)
    assert (idx == 123).any()
    # "next layer": different values, same peaked key position
    v2 = torch.randn(1, 1, s, d)
    dense = F.scaled_dot_product_attention(q, k, v2, enable_gqa=True)
    sparse = sparse_decode(q, k, v2, idx, backend="torch")
    assert (sparse[:, 0] - dense[:, 0]).abs().max() < 1e-3  # head 0's attention is peaked there


def test_sparse_decode_rejects_bad_positions():
    q, k, v = _qkv(1, 2, 1, 10, 16)
    with pytest.raises(ValueError, match=r"\[0, S=10\)"):
        sparse_decode(q, k, v, torch.tensor([[[0, 10]]]))
    with pytest.raises(ValueError, match="token_idx must be"):
        sparse_decode(q, k, v, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"\[B, H, 1, D\]"):
        sparse_decode(torch.randn(1, 2, 2, 16), k, v, torch.tensor([[[0]]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_triton_half_precision_on_gpu(dtype):
    torch.manual_seed(0)
    q, k, v = (x.cuda() for x in _qkv(4, 32, 8, 8000, 128))
    idx = select_decode_tokens(q, k, budget=1024)
    ref = sparse_decode(q, k, v, idx, backend="reference")
    out = sparse_decode(q.to(dtype), k.to(dtype), v.to(dtype), idx, backend="triton").float()
    rel_rmse = ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    print(f"max abs diff {(out - ref).abs().max().item():.3e}, rel rmse {rel_rmse:.3e}")
    assert rel_rmse < 5e-3
