"""The folio_sparse transformers backend: equals SDPA when every block is kept, falls back cleanly."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

import models.attention as attention
from models.attention import (
    BACKEND_NAME,
    SparseAttentionConfig,
    register_sparse_attention,
    sparse_attention_mask,
)

transformers = pytest.importorskip("transformers")

T = 150  # three query blocks, the last one partial
DENSE = SparseAttentionConfig(method="dense", min_length=64, backend="torch")


def _gemma_config():
    return transformers.Gemma3TextConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=64,
        query_pre_attn_scalar=64,
        sliding_window=48,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024,
    )


def _qwen_config(layers: int = 2):
    # Qwen2.5-Coder-0.5B's attention geometry: 14 query heads, 2 key heads, head_dim 64.
    return transformers.Qwen2Config(
        vocab_size=256,
        hidden_size=896,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )


MODELS = {
    "gemma3": (_gemma_config, "Gemma3ForCausalLM"),
    "qwen2": (_qwen_config, "Qwen2ForCausalLM"),
}


def _pair(name: str):
    """The same random weights twice: stock SDPA and folio_sparse (separate config objects)."""
    register_sparse_attention()
    make_config, cls_name = MODELS[name]
    cls = getattr(transformers, cls_name)
    torch.manual_seed(0)
    sdpa = cls._from_config(make_config(), attn_implementation="sdpa").eval()
    sparse = cls._from_config(copy.deepcopy(make_config()), attn_implementation=BACKEND_NAME).eval()
    sparse.load_state_dict(sdpa.state_dict())
    return sdpa, sparse


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request):
    return request.param, *_pair(request.param)


@torch.no_grad()
def test_every_block_kept_gives_sdpa_logits(pair):
    name, sdpa, sparse = pair
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (2, T))
    expected = sdpa(ids).logits
    got = sparse(ids, sparse_attention=DENSE).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_triton_kernel_in_the_model_gives_sdpa_logits():
    """The same check through the Triton kernel (interpreter on CPU), sliding and full layers."""
    sdpa, sparse = _pair("gemma3")
    ids = torch.randint(0, 256, (1, 130))
    cfg = SparseAttentionConfig(method="dense", min_length=64, backend="triton")
    torch.testing.assert_close(
        sparse(ids, sparse_attention=cfg).logits, sdpa(ids).logits, atol=1e-4, rtol=1e-4
    )


@torch.no_grad()
def test_sparse_pattern_runs_and_changes_logits_only_a_little(pair):
    name, sdpa, sparse = pair
    torch.manual_seed(2)
    ids = torch.randint(0, 256, (1, T))
    expected = sdpa(ids).logits
    cfg = SparseAttentionConfig(
        method="vertical_slash",
        vertical_blocks=0,
        slash_blocks=0,
        local_blocks=1,
        min_length=64,
        backend="torch",
    )
    got = sparse(ids, sparse_attention=cfg).logits
    assert torch.isfinite(got).all()
    # the first two query blocks keep every causal block; the third drops one
    torch.testing.assert_close(got[:, :128], expected[:, :128], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got[:, 128:], expected[:, 128:], atol=1e-4)
    for method in ("flexprefill", "hisa"):
        cfg = SparseAttentionConfig(method=method, min_length=64, backend="torch")
        out = sparse(ids, sparse_attention=cfg).logits
        assert torch.isfinite(out).all()


@torch.no_grad()
def test_short_prefill_and_decode_use_stock_sdpa(monkeypatch, pair):
    name, sdpa, sparse = pair
    calls = []
    real = attention.block_sparse_attn
    monkeypatch.setattr(
        attention, "block_sparse_attn", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    ids = torch.randint(0, 256, (1, 40))
    torch.testing.assert_close(
        sparse(ids, sparse_attention=DENSE).logits, sdpa(ids).logits, atol=1e-4, rtol=1e-4
    )
    assert not calls, "a prefill below min_length must not run the sparse kernel"
    sparse(torch.randint(0, 256, (1, T)), sparse_attention=DENSE)
    assert calls


@torch.no_grad()
def test_generate_after_sparse_prefill_matches_sdpa(pair):
    name, sdpa, sparse = pair
    # generate() rejects unknown keywords, so bind the options to a name of their own
    impl = register_sparse_attention(DENSE, name="folio_sparse_test_dense")
    model = copy.deepcopy(sparse)
    model.set_attn_implementation(impl)
    ids = torch.randint(0, 256, (1, T))
    expected = sdpa.generate(ids, max_new_tokens=6, do_sample=False)
    got = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)


@torch.no_grad()
def test_chunked_prefill_with_a_cache_is_bottom_right_causal(pair):
    name, sdpa, sparse = pair
    ids = torch.randint(0, 256, (1, 230))
    expected = sdpa(ids).logits[:, 100:]
    first = sparse(ids[:, :100], use_cache=True, sparse_attention=DENSE)
    got = sparse(
        ids[:, 100:], cache=first.past_key_values, use_cache=True, sparse_attention=DENSE
    ).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_padded_batch_falls_back_to_masked_sdpa(pair):
    name, sdpa, sparse = pair
    ids = torch.randint(0, 256, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :20] = 0  # left padding
    expected = sdpa(ids, attention_mask=mask).logits
    got = sparse(ids, attention_mask=mask, sparse_attention=DENSE).logits
    torch.testing.assert_close(got[0], expected[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, 20:], expected[1, 20:], atol=1e-4, rtol=1e-4)


def test_mask_function_skips_only_plain_aligned_causal_masks():
    from transformers.masking_utils import causal_mask_function

    assert sparse_attention_mask(1, 10, 10, mask_function=causal_mask_function) is None
    assert sparse_attention_mask(1, 4, 14, q_offset=10, mask_function=causal_mask_function) is None
    padding = torch.ones(1, 10, dtype=torch.bool)
    padding[0, 0] = False
    mask = sparse_attention_mask(
        1, 10, 10, mask_function=causal_mask_function, attention_mask=padding
    )
    assert mask.shape == (1, 1, 10, 10) and not mask[0, 0, :, 0].any()
    static = sparse_attention_mask(1, 10, 32, mask_function=causal_mask_function)  # a static cache
    assert static is not None and not static[0, 0, 0, 1:].any()
    custom = sparse_attention_mask(
        1, 10, 10, mask_function=causal_mask_function, allow_is_causal_skip=False
    )
    assert custom is not None


def test_options_must_be_a_config():
    sdpa, sparse = _pair("gemma3")
    with pytest.raises(TypeError, match="SparseAttentionConfig"):
        sparse(
            torch.randint(0, 256, (1, 70)), sparse_attention={"method": "dense", "min_length": 2}
        )
    with pytest.raises(ValueError):
        SparseAttentionConfig(method="nope")


@pytest.mark.slow
@torch.no_grad()
def test_real_gemma3_270m_dense_equals_sdpa_and_sparse_stays_close(tmp_path_factory, mmlb_dir):
    """Gemma 3 270M on a real 10-K: all blocks == SDPA; FlexPrefill and ~90% sparse stay close."""
    import pymupdf

    from models._packaged import resolve_model_dir

    register_sparse_attention()
    # NOTE: converting the GGUF takes minutes; FOLIO_TEST_MODELS may name a folder that holds it
    cache = os.environ.get("FOLIO_TEST_MODELS")
    folder = resolve_model_dir(
        "gemma3-270m", Path(cache) if cache else tmp_path_factory.mktemp("models")
    )
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa"
    )
    with pymupdf.open(mmlb_dir / "documents" / "NETFLIX_2015_10K.pdf") as doc:
        text = "\n".join(page.get_text() for page in doc)
    ids = tok(text, return_tensors="pt").input_ids[:, :4096]
    expected = model(ids, logits_to_keep=256).logits[0].float().log_softmax(-1)
    model.set_attn_implementation(BACKEND_NAME)
    # NOTE: backend="torch": under the suite's TRITON_INTERPRET=1, "auto" would interpret the
    # Triton kernel over a real 4k-token model (hours); the kernel has its own small-shape tests.
    dense = SparseAttentionConfig(method="dense", min_length=1024, backend="torch")
    got = model(ids, logits_to_keep=256, sparse_attention=dense).logits[0].float().log_softmax(-1)
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)

    def divergence(config: SparseAttentionConfig) -> tuple[float, float]:
        got = model(ids, logits_to_keep=256, sparse_attention=config).logits[0].float()
        got = got.log_softmax(-1)
        kl = torch.nn.functional.kl_div(got, expected, log_target=True, reduction="none").sum(-1)
        return kl.mean().item(), (got.argmax(-1) == expected.argmax(-1)).float().mean().item()

    # the default (FlexPrefill, budget from the estimated mass): indistinguishable here
    kl, agree = divergence(SparseAttentionConfig(min_length=1024, backend="torch"))
    print(f"flexprefill: mean KL {kl:.4f}, top-1 agreement {agree:.3f}")
    assert kl < 0.01 and agree > 0.95
    # ~90% sparse: at most 4 of the 64 key blocks per row. Measured 2026-11-28: KL 0.138,
    # agreement 0.812 (a same-budget local window: 0.134 / 0.824); the bound is a regression
    # guard set from that measurement.
    kl, agree = divergence(
        SparseAttentionConfig(
            method="vertical_slash", min_length=1024, vertical_blocks=1, slash_blocks=1,
            local_blocks=1, backend="torch",
        )
    )  # fmt: skip
    print(f"vertical-slash 1+1: mean KL {kl:.4f}, top-1 agreement {agree:.3f}")
    assert kl < 0.3 and agree > 0.7


@torch.no_grad()
def test_tidal_decode_reuses_the_selection_of_the_selection_layer(monkeypatch):
    """Layers after the selection layer attend to the selected positions; earlier ones stay dense."""
    register_sparse_attention()
    cfg = _qwen_config(layers=4)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM._from_config(cfg, attn_implementation=BACKEND_NAME).eval()
    ids = torch.randint(0, 256, (1, 120))
    prefill = model(ids, use_cache=True)
    seen = []
    real = attention.sparse_decode
    monkeypatch.setattr(
        attention, "sparse_decode", lambda q, *a, **k: seen.append(q.shape) or real(q, *a, **k)
    )
    step = torch.tensor([[7]])
    dense = model(step, cache=copy.deepcopy(prefill.past_key_values)).logits
    state = attention.SparseDecodeState(
        (1,), budget=100, sink_tokens=4, local_tokens=16, backend="torch"
    )
    got = model(step, cache=copy.deepcopy(prefill.past_key_values), sparse_decode=state).logits
    assert len(seen) == 2, "layers 2 and 3 reuse layer 1's selection"
    assert state.token_idx.shape == (1, 2, 100)
    assert torch.isfinite(got).all()
    assert (got - dense).abs().max() < 0.5  # 100 of 121 positions kept
    wide = attention.SparseDecodeState((1,), budget=200, backend="torch")  # budget >= cache: dense
    torch.testing.assert_close(
        model(step, cache=copy.deepcopy(prefill.past_key_values), sparse_decode=wide).logits, dense
    )
