"""Block-table builders: sorted, in range, causal, within budget, and they find planted patterns."""

from __future__ import annotations

import pytest
import torch

from kernels import (
    BlockIndex,
    attention_block_mass,
    attention_mass_kept,
    block_mask_to_index,
    build_dense_index,
    build_flexprefill_index,
    build_hisa_index,
    build_vertical_slash_index,
    build_window_index,
    dense_mask,
)

SHAPES = [
    pytest.param(1, 4, 2, 300, 300, 16, id="B1-H4-KV2-T300-bs16"),
    pytest.param(2, 2, 1, 130, 130, 64, id="B2-H2-KV1-T130-bs64"),
    pytest.param(1, 4, 1, 200, 263, 32, id="B1-H4-KV1-T200-S263-bs32"),
    pytest.param(1, 2, 2, 63, 63, 16, id="B1-H2-KV2-T63-bs16"),
]


def _last_causal_block(t: int, s: int, bs: int) -> torch.Tensor:
    nq = -(-t // bs)
    return (s - t + torch.clamp((torch.arange(nq) + 1) * bs, max=t) - 1) // bs


def _check_invariants(
    index: BlockIndex, *, budget: int | None, sink: int = 1, local: int = 1
) -> None:
    """Sorted, in range, causal, within budget, sink and local blocks present."""
    t, s, bs = index.q_len, index.kv_len, index.block_size
    nk = -(-s // bs)
    idx, cnt = index.block_idx.long(), index.block_count.long()
    assert idx.dtype == torch.int64 and index.block_idx.dtype == torch.int32
    slot = torch.arange(idx.shape[-1])
    valid = slot < cnt[..., None]
    assert ((idx >= 0) == valid).all(), "padding must be -1 exactly after block_count"
    assert (idx[valid] < nk).all(), "block id out of range"
    gaps = idx[..., 1:] - idx[..., :-1]
    assert (gaps[valid[..., 1:]] > 0).all(), "ids must be strictly ascending"
    last = _last_causal_block(t, s, bs)
    assert (torch.where(valid, idx, -1) <= last[:, None]).all(), "non-causal block selected"
    if budget is not None:
        assert (cnt <= budget).all(), f"more than {budget} blocks in a row"
    blocks = index.to_block_mask()
    nq = blocks.shape[2]
    rows = torch.arange(nq)
    assert blocks[..., rows, last].all(), "diagonal block missing"
    for j in range(min(sink, nk)):
        causal = j <= last
        assert blocks[..., rows[causal], j].all(), "sink block missing"
    for back in range(1, local):
        ok = last - back >= 0
        assert blocks[..., rows[ok], (last - back)[ok]].all(), "local block missing"


def _qk(b, h, hkv, t, s, d=32):
    return torch.randn(b, h, t, d), torch.randn(b, hkv, s, d)


@pytest.mark.parametrize(("b", "h", "hkv", "t", "s", "bs"), SHAPES)
@pytest.mark.parametrize("share", [False, True], ids=["per-head", "per-kv-head"])
def test_vertical_slash_invariants(b, h, hkv, t, s, bs, share):
    torch.manual_seed(0)
    q, k = _qk(b, h, hkv, t, s)
    index = build_vertical_slash_index(
        q,
        k,
        vertical_blocks=2,
        slash_blocks=3,
        sink_blocks=1,
        local_blocks=2,
        block_size=bs,
        share_kv_heads=share,
    )
    assert index.num_heads == (hkv if share else h)
    _check_invariants(index, budget=1 + 2 + 2 + 3, local=2)


@pytest.mark.parametrize(("b", "h", "hkv", "t", "s", "bs"), SHAPES)
@pytest.mark.parametrize("max_blocks", [None, 4])
def test_flexprefill_invariants(b, h, hkv, t, s, bs, max_blocks):
    torch.manual_seed(0)
    q, k = _qk(b, h, hkv, t, s)
    index = build_flexprefill_index(q, k, gamma=0.8, max_blocks=max_blocks, block_size=bs)
    _check_invariants(index, budget=max_blocks)


@pytest.mark.parametrize(("b", "h", "hkv", "t", "s", "bs"), SHAPES)
@pytest.mark.parametrize("share", [False, True], ids=["per-head", "per-kv-head"])
def test_hisa_invariants(b, h, hkv, t, s, bs, share):
    torch.manual_seed(0)
    q, k = _qk(b, h, hkv, t, s)
    top_k, cand = 7, 3
    index = build_hisa_index(
        q, k, candidate_blocks=cand, top_k=top_k, block_size=bs, share_kv_heads=share
    )
    _check_invariants(index, budget=1 + 1 + cand)
    assert index.token_mask is not None
    # tokens outside sink and local blocks stay within top_k per query block
    bits = index.to_token_bits()
    nk = bits.shape[-1]
    last = _last_causal_block(t, s, bs)
    forced = (torch.arange(nk)[None, :] == last[:, None]) | (torch.arange(nk)[None, :] == 0)
    picked = ((bits[..., None] >> torch.arange(bs)) & 1).sum(-1)  # [B, Hi, NQ, NK]
    assert (picked.masked_fill(forced, 0).sum(-1) <= top_k).all()
    # selected tokens are causal
    keep = dense_mask(index)
    assert keep.any(-1).all(), "every query keeps at least itself"


@pytest.mark.parametrize(
    ("t", "s", "window", "bs"), [(300, 300, 37, 16), (130, 200, 64, 64), (63, 63, 100, 16)]
)
def test_window_index_covers_exactly_the_window(t, s, window, bs):
    index = build_window_index(1, 2, t, s, window=window, block_size=bs)
    _check_invariants(index, budget=window // bs + 2, sink=0)
    # every visible key of the window lies in a selected block
    blocks = index.to_block_mask()[0, 0]
    qpos = torch.arange(s - t, s)[:, None]
    kpos = torch.arange(s)[None, :]
    needed = (kpos <= qpos) & (qpos - kpos < window)
    selected = blocks.repeat_interleave(bs, 0)[:t].repeat_interleave(bs, 1)[:, :s]
    assert (selected | ~needed).all()


def test_dense_index_means_the_causal_mask():
    index = build_dense_index(1, 3, 130, 170)
    mask = dense_mask(index)
    expected = torch.arange(170)[None, :] <= torch.arange(40, 170)[:, None]
    assert torch.equal(mask[0, 0], expected)
    assert index.density() == 1.0


def test_block_mask_round_trip_drops_non_causal_blocks():
    torch.manual_seed(0)
    mask = torch.rand(2, 3, 5, 5) < 0.5
    index = block_mask_to_index(mask, q_len=300, kv_len=300, block_size=64)
    causal = torch.ones(5, 5).tril().bool()
    assert torch.equal(index.to_block_mask(), mask & causal)


def test_vertical_slash_finds_planted_column_and_diagonal():
    """A key column every query attends to and a fixed-offset diagonal are both selected."""
    torch.manual_seed(0)
    t, d, bs = 512, 32, 16
    q = torch.randn(1, 1, t, d) * 0.1
    k = torch.randn(1, 1, t, d) * 0.1
    direction = torch.zeros(d)
    direction[0] = 1.0
    q[..., :, :] += 3.0 * direction
    k[0, 0, 100] += 8.0 * direction  # column at key 100 (block 6)
    index = build_vertical_slash_index(q, k, vertical_blocks=1, slash_blocks=0, block_size=bs)
    blocks = index.to_block_mask()[0, 0]
    assert blocks[7:, 100 // bs].all(), "planted vertical block missing"

    # diagonal: query i attends to key i - 200 (rotate a shared code by position)
    codes = torch.nn.functional.normalize(torch.randn(t, d), dim=-1)
    q2 = (codes * 6.0)[None, None]
    k2 = torch.zeros(1, 1, t, d)
    k2[0, 0, : t - 200] = codes[200:] * 6.0
    index2 = build_vertical_slash_index(q2, k2, vertical_blocks=0, slash_blocks=2, block_size=bs)
    blocks2 = index2.to_block_mask()[0, 0]
    for n in range(14, t // bs):
        lo, hi = (n * bs - 200) // bs, (n * bs + bs - 1 - 200) // bs
        assert blocks2[n, lo] or blocks2[n, hi], f"planted slash missing in query block {n}"


def test_flexprefill_covers_gamma_of_estimated_mass():
    """On peaked attention the query-aware pattern keeps >= gamma of the true mass with few blocks."""
    torch.manual_seed(0)
    t, d, bs = 512, 32, 16
    q = torch.randn(1, 2, t, d)
    k = torch.randn(1, 1, t, d)
    u = torch.nn.functional.normalize(torch.randn(d), dim=0)
    q += 3.0 * u
    k[0, 0, 64:80] += 3.0 * u  # a block of keys that every query likes
    index = build_flexprefill_index(q, k, gamma=0.9, block_size=bs)
    kept = attention_mass_kept(q, k, index)
    assert kept.min() > 0.8, kept
    assert index.density() < 0.9


def test_flexprefill_max_blocks_caps_rows():
    torch.manual_seed(0)
    q, k = _qk(1, 2, 1, 400, 400)
    capped = build_flexprefill_index(q, k, gamma=1.0, max_blocks=3, block_size=16)
    assert int(capped.block_count.max()) <= 3
    free = build_flexprefill_index(q, k, gamma=1.0, block_size=16)
    assert int(free.block_count.max()) > 3


def test_hisa_keeps_the_planted_token():
    torch.manual_seed(0)
    t, d, bs = 256, 32, 16
    q = torch.randn(1, 1, t, d) * 0.1
    k = torch.randn(1, 1, t, d) * 0.1
    q[..., 0] += 2.0
    k[0, 0, 37, 0] += 10.0  # token 37 (block 2, bit 5)
    index = build_hisa_index(q, k, candidate_blocks=2, top_k=1, sink_blocks=0, block_size=bs)
    keep = dense_mask(index)[0, 0]
    assert keep[64:, 37].all(), "planted token not selected"
    # only one non-local token per query block besides the diagonal block
    assert keep[200, :192].sum() == 1


def test_attention_mass_kept_of_dense_is_one_and_matches_brute_force():
    torch.manual_seed(0)
    q, k = _qk(1, 4, 2, 200, 200)
    q *= 3
    assert torch.allclose(
        attention_mass_kept(q, k, build_dense_index(1, 2, 200, 200)), torch.ones(1, 4)
    )
    index = build_vertical_slash_index(q, k, vertical_blocks=1, slash_blocks=1, block_size=16)
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 32**-0.5
    causal = dense_mask(build_dense_index(1, 4, 200, 200))
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    keep = dense_mask(index).repeat_interleave(4 // index.num_heads, 1)
    brute = (probs * keep).sum(-1).mean(-1)
    torch.testing.assert_close(attention_mass_kept(q, k, index), brute, atol=1e-5, rtol=1e-5)
    # the block mass of a longer prefix scores a shorter one
    mass = attention_block_mass(q, k, block_size=16)
    short = build_vertical_slash_index(
        q[:, :, :96], k[:, :, :96], vertical_blocks=1, slash_blocks=1, block_size=16
    )
    torch.testing.assert_close(
        attention_mass_kept(q[:, :, :96], k[:, :, :96], short, block_mass=mass),
        attention_mass_kept(q[:, :, :96], k[:, :, :96], short),
        atol=1e-5,
        rtol=1e-5,
    )


def test_builders_reject_bad_arguments():
    q, k = _qk(1, 3, 2, 64, 64)
    with pytest.raises(ValueError, match="multiple"):
        build_vertical_slash_index(q, k)
    q, k = _qk(1, 2, 1, 64, 32)
    with pytest.raises(ValueError, match="S >= T"):
        build_flexprefill_index(q, k)
    q, k = _qk(1, 2, 1, 64, 64)
    with pytest.raises(ValueError, match="block_size"):
        build_hisa_index(q, k, block_size=128)
    with pytest.raises(ValueError, match="local_blocks"):
        build_vertical_slash_index(q, k, local_blocks=0)
    with pytest.raises(ValueError, match="gamma"):
        build_flexprefill_index(q, k, gamma=0.0)


def test_hisa_with_room_for_every_candidate_token_is_stage_one_alone():
    torch.manual_seed(0)
    q, k = _qk(1, 4, 2, 700, 700)
    whole = build_hisa_index(q, k, candidate_blocks=4, top_k=4 * 16, block_size=16)
    assert bool((whole.token_mask[whole.block_idx >= 0] == -1).all()), "whole blocks kept"
    # stage 2 with one token less: same blocks, one token fewer per query block at most
    fewer = build_hisa_index(q, k, candidate_blocks=4, top_k=4 * 16 - 1, block_size=16)
    kept = dense_mask(whole).sum(-1)
    assert (kept - dense_mask(fewer).sum(-1)).max() <= 1
    assert torch.equal(whole.to_block_mask() | fewer.to_block_mask(), whole.to_block_mask())
