"""Block-sparse attention: reference vs SDPA, Triton (interpreter) and CPU path vs reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import (
    BlockIndex,
    block_mask_to_index,
    block_sparse_attn,
    build_dense_index,
    build_hisa_index,
    build_vertical_slash_index,
    build_window_index,
)
from kernels._utils import Backend, resolve_backend

ATOL = RTOL = 1e-4


def _qkv(b: int, h: int, hkv: int, t: int, d: int, s: int | None = None, dtype=torch.float32):
    s = t if s is None else s
    q = torch.randn(b, h, t, d, dtype=dtype)
    k = torch.randn(b, hkv, s, d, dtype=dtype)
    v = torch.randn(b, hkv, s, d, dtype=dtype)
    return q, k, v


def _random_index(b: int, hi: int, t: int, s: int, bs: int, p: float, seed: int) -> BlockIndex:
    """A random causal block pattern that always keeps the diagonal block."""
    gen = torch.Generator().manual_seed(seed)
    nq, nk = -(-t // bs), -(-s // bs)
    mask = torch.rand(b, hi, nq, nk, generator=gen) < p
    last = (s - t + torch.clamp((torch.arange(nq) + 1) * bs, max=t) - 1) // bs
    mask[..., torch.arange(nq), last] = True
    return block_mask_to_index(mask, q_len=t, kv_len=s, block_size=bs)


def _sdpa(q, k, v, scale=None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scale)


SHAPES = [
    pytest.param(1, 4, 2, 130, 64, id="B1-H4-KV2-T130-D64"),
    pytest.param(2, 2, 1, 63, 32, id="B2-H2-KV1-T63-D32"),
    pytest.param(1, 4, 1, 128, 128, id="B1-H4-KV1-T128-D128"),
    pytest.param(1, 2, 2, 130, 256, id="B1-H2-KV2-T130-D256"),
    pytest.param(1, 2, 1, 100, 96, id="B1-H2-KV1-T100-D96"),
]


@pytest.mark.parametrize(("b", "h", "hkv", "t", "d"), SHAPES)
@pytest.mark.parametrize("per_kv", [False, True], ids=["idx-per-q-head", "idx-per-kv-head"])
def test_reference_with_every_block_equals_sdpa(b, h, hkv, t, d, per_kv):
    torch.manual_seed(0)
    q, k, v = _qkv(b, h, hkv, t, d)
    index = build_dense_index(b, hkv if per_kv else h, t, t)
    out = block_sparse_attn(q, k, v, index, backend="reference")
    torch.testing.assert_close(out, _sdpa(q, k, v), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("b", "h", "hkv", "t", "d"), SHAPES)
def test_cpu_path_with_every_block_equals_sdpa(b, h, hkv, t, d):
    torch.manual_seed(0)
    q, k, v = _qkv(b, h, hkv, t, d)
    out = block_sparse_attn(q, k, v, build_dense_index(b, h, t, t), backend="torch")
    torch.testing.assert_close(out, _sdpa(q, k, v), atol=ATOL, rtol=RTOL)


def _cases():
    """(name, builder) pairs producing (index, window) for given q, k."""
    return {
        "random": lambda q, k, bs: (
            _random_index(q.shape[0], q.shape[1], q.shape[2], k.shape[2], bs, 0.4, 1),
            None,
        ),
        "vslash-kv": lambda q, k, bs: (
            build_vertical_slash_index(
                q, k, vertical_blocks=1, slash_blocks=1, block_size=bs, share_kv_heads=True
            ),
            None,
        ),
        "hisa-tokens": lambda q, k, bs: (
            build_hisa_index(q, k, candidate_blocks=2, top_k=9, block_size=bs),
            None,
        ),
        "window": lambda q, k, bs: (
            build_window_index(
                q.shape[0], q.shape[1], q.shape[2], k.shape[2], window=37, block_size=bs
            ),
            37,
        ),
    }


@pytest.mark.parametrize(("b", "h", "hkv", "t", "d"), SHAPES)
@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("bs", [16, 64], ids=["bs16", "bs64"])
def test_cpu_path_matches_reference(b, h, hkv, t, d, case, bs):
    torch.manual_seed(0)
    q, k, v = _qkv(b, h, hkv, t, d)
    index, window = _cases()[case](q, k, bs)
    ref = block_sparse_attn(q, k, v, index, window=window, backend="reference")
    out = block_sparse_attn(q, k, v, index, window=window, backend="torch")
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


# Interpreter runs are slow (a 64x64x64 tl.dot is ~0.1 s): a few awkward shapes only.
TRITON_CASES = [
    pytest.param(1, 4, 2, 130, 64, "random", id="B1-H4-KV2-T130-D64-random"),
    pytest.param(2, 2, 1, 63, 64, "vslash-kv", id="B2-H2-KV1-T63-D64-vslash"),
    pytest.param(1, 2, 1, 130, 128, "hisa-tokens", id="B1-H2-KV1-T130-D128-hisa"),
    pytest.param(1, 2, 2, 128, 256, "window", id="B1-H2-KV2-T128-D256-window"),
    pytest.param(1, 2, 1, 100, 96, "random", id="B1-H2-KV1-T100-D96-random"),
]


@pytest.mark.parametrize(("b", "h", "hkv", "t", "d", "case"), TRITON_CASES)
def test_triton_matches_reference(b, h, hkv, t, d, case):
    torch.manual_seed(0)
    q, k, v = _qkv(b, h, hkv, t, d)
    index, window = _cases()[case](q, k, 64)
    ref = block_sparse_attn(q, k, v, index, window=window, backend="reference")
    out = block_sparse_attn(q, k, v, index, window=window, backend="triton")
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_more_keys_than_queries_is_bottom_right_causal(backend):
    """A cached prefill (S > T): the sparse kernel equals the last T rows of a full pass."""
    torch.manual_seed(0)
    t, s = 70, 150
    q_full, k, v = _qkv(1, 2, 1, s, 64)
    q = q_full[:, :, s - t :]
    index = _random_index(1, 2, t, s, 64, 0.5, 3)
    ref = block_sparse_attn(q, k, v, index, backend="reference")
    out = block_sparse_attn(q, k, v, index, backend=backend)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    dense = block_sparse_attn(q, k, v, build_dense_index(1, 2, t, s), backend=backend)
    full = _sdpa(q_full, k, v)[:, :, s - t :]
    torch.testing.assert_close(dense, full, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_query_that_sees_no_key_returns_zeros(backend):
    torch.manual_seed(0)
    q, k, v = _qkv(1, 2, 1, 128, 32)
    # query block 1 keeps only key block 0 (keys 0..63); a window of 8 hides it from queries >= 71
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[..., 0, 0] = True
    mask[..., 1, 0] = True
    index = block_mask_to_index(mask, q_len=128, kv_len=128)
    out = block_sparse_attn(q, k, v, index, window=8, backend=backend)
    assert torch.isfinite(out).all()
    assert out[:, :, 71:].abs().max() == 0
    assert out[:, :, 64:71].abs().amax(-1).min() > 0


def test_scale_argument_is_used():
    torch.manual_seed(0)
    q, k, v = _qkv(1, 2, 1, 80, 32)
    out = block_sparse_attn(q, k, v, build_dense_index(1, 2, 80, 80), scale=0.3, backend="torch")
    torch.testing.assert_close(out, _sdpa(q, k, v, scale=0.3), atol=ATOL, rtol=RTOL)


def test_cpu_path_keeps_half_precision_dtype():
    torch.manual_seed(0)
    q, k, v = _qkv(1, 2, 1, 80, 32, dtype=torch.bfloat16)
    index = build_dense_index(1, 2, 80, 80)
    out = block_sparse_attn(q, k, v, index, backend="torch")
    assert out.dtype == torch.bfloat16
    ref = block_sparse_attn(q, k, v, index, backend="reference")
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_small_workspace_chunks_give_the_same_answer():
    from kernels.block_sparse.cpu import block_sparse_attn_cpu

    torch.manual_seed(0)
    q, k, v = _qkv(1, 4, 2, 300, 32)
    index = _random_index(1, 4, 300, 300, 16, 0.5, 7)
    ref = block_sparse_attn(q, k, v, index, backend="reference")
    out = block_sparse_attn_cpu(q, k, v, index, scale=32**-0.5, chunk_bytes=1)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"q": torch.randn(1, 3, 64, 32), "k": torch.randn(1, 2, 64, 32)}, "multiple of H_kv"),
        ({"q": torch.randn(1, 2, 64, 512), "k": torch.randn(1, 1, 64, 512)}, "head dim"),
        (
            {"q": torch.randn(1, 2, 64, 32).double(), "k": torch.randn(1, 1, 64, 32).double()},
            "dtype",
        ),
        ({"q": torch.randn(1, 2, 65, 32), "k": torch.randn(1, 1, 65, 32)}, "index was built"),
    ],
)
def test_dispatcher_rejects_bad_inputs(kwargs, match):
    q, k = kwargs["q"], kwargs["k"]
    index = build_dense_index(1, 2, 64, 64)
    with pytest.raises(ValueError, match=match):
        block_sparse_attn(q, k, k.clone(), index)


def test_dispatcher_rejects_index_with_wrong_heads():
    q, k, v = _qkv(1, 4, 2, 64, 32)
    with pytest.raises(ValueError, match="H_idx"):
        block_sparse_attn(q, k, v, build_dense_index(1, 1, 64, 64))


def test_explicit_triton_without_interpreter_or_cuda_raises(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: triton can run")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend("triton", q)
    assert resolve_backend("auto", q) is Backend.TORCH
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("cuda", q)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize(
    ("b", "h", "hkv", "t", "d"),
    [
        pytest.param(2, 8, 2, 1000, 64, id="B2-H8-KV2-T1000-D64"),
        pytest.param(1, 4, 1, 2100, 128, id="B1-H4-KV1-T2100-D128"),
        pytest.param(1, 4, 1, 1500, 256, id="B1-H4-KV1-T1500-D256"),
    ],
)
def test_triton_half_precision_on_gpu(b, h, hkv, t, d, dtype):
    torch.manual_seed(0)
    q, k, v = (x.cuda() for x in _qkv(b, h, hkv, t, d))
    index = build_vertical_slash_index(q, k, vertical_blocks=4, slash_blocks=4)
    ref = block_sparse_attn(q, k, v, index, backend="reference")
    out = block_sparse_attn(q.to(dtype), k.to(dtype), v.to(dtype), index, backend="triton")
    diff = (out.float() - ref).abs()
    rel_rmse = (diff.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    print(f"max abs diff {diff.max().item():.3e}, rel rmse {rel_rmse:.3e}")
    assert rel_rmse < 5e-3, f"rel rmse {rel_rmse:.3e} >= 5e-3"
    hisa = build_hisa_index(q, k, candidate_blocks=4, top_k=128)
    ref = block_sparse_attn(q, k, v, hisa, backend="reference")
    out = block_sparse_attn(q.to(dtype), k.to(dtype), v.to(dtype), hisa, backend="triton")
    rel_rmse = ((out.float() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
    assert rel_rmse < 5e-3, f"hisa rel rmse {rel_rmse:.3e} >= 5e-3"
