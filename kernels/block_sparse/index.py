"""Block tables for block-sparse attention, and the pattern builders that produce them. Pure torch.

Positions follow flash-attention's bottom-right causal alignment: with ``T`` queries and ``S >= T``
keys, query ``i`` sits at absolute position ``S - T + i`` and sees key ``s`` iff ``s <= S - T + i``
(and, with a sliding ``window``, iff also ``S - T + i - s < window``). Query block ``n`` holds queries
``[n * bs, min((n + 1) * bs, T))``; key block ``j`` holds keys ``[j * bs, min((j + 1) * bs, S))``.

Every builder is a pure function ``(q, k, **pattern) -> BlockIndex`` that always keeps the sink
block(s) and the local (diagonal) block(s) of each query block, so that every query sees itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "BLOCK_SIZE",
    "BlockIndex",
    "attention_block_mass",
    "attention_mass_kept",
    "block_mask_to_index",
    "build_dense_index",
    "build_flexprefill_index",
    "build_hisa_index",
    "build_vertical_slash_index",
    "build_window_index",
    "dense_mask",
]

BLOCK_SIZE = 64
_ALL_TOKENS = -1  # int64 with every bit set: keep all tokens of a block


@dataclass(frozen=True)
class BlockIndex:
    """Which key blocks each query block attends to (the table every kernel consumes).

    Attributes:
        block_idx: ``[B, H_idx, NQ, MAXB]`` int32. Key block ids, strictly ascending in the first
            ``block_count`` slots of each row, ``-1`` after them.
        block_count: ``[B, H_idx, NQ]`` int32. Number of valid slots per query block.
        token_mask: ``[B, H_idx, NQ, MAXB]`` int64 or ``None``. Bit ``t`` of a slot keeps token ``t``
            of that key block (token-level selection, HISA); ``None`` keeps whole blocks.
        q_len: ``T``, the number of queries the index was built for.
        kv_len: ``S``, the number of keys (``S >= T``; bottom-right causal alignment).
        block_size: tokens per query block and per key block (64 by default).

    ``H_idx`` is either ``H`` (one pattern per query head) or a divisor of ``H`` that is a multiple
    of ``H_kv`` (typically ``H_kv``: one pattern shared by the query heads of a GQA group).
    """

    block_idx: torch.Tensor
    block_count: torch.Tensor
    token_mask: torch.Tensor | None
    q_len: int
    kv_len: int
    block_size: int = BLOCK_SIZE

    @property
    def num_heads(self) -> int:
        """``H_idx``."""
        return self.block_idx.shape[1]

    @property
    def num_q_blocks(self) -> int:
        """``NQ = ceil(T / block_size)``."""
        return self.block_idx.shape[2]

    @property
    def num_k_blocks(self) -> int:
        """``NK = ceil(S / block_size)``."""
        return -(-self.kv_len // self.block_size)

    def density(self) -> float:
        """Kept blocks over causal blocks (1.0 for a dense causal index)."""
        causal = _causal_block_mask(self.q_len, self.kv_len, self.block_size, self.block_idx.device)
        total = causal.sum().item() * self.block_idx.shape[0] * self.num_heads
        return self.block_count.sum().item() / max(total, 1)

    def to_block_mask(self) -> torch.Tensor:
        """``[B, H_idx, NQ, NK]`` bool: the selected key blocks of each query block."""
        b, h, nq, maxb = self.block_idx.shape
        mask = torch.zeros(
            b, h, nq, self.num_k_blocks + 1, dtype=torch.bool, device=self.block_idx.device
        )
        idx = torch.where(self.block_idx < 0, self.num_k_blocks, self.block_idx).long()
        mask.scatter_(-1, idx, True)
        return mask[..., : self.num_k_blocks]

    def to_token_bits(self) -> torch.Tensor:
        """``[B, H_idx, NQ, NK]`` int64: per selected block its kept-token bits (0 where unselected)."""
        b, h, nq, _ = self.block_idx.shape
        bits = torch.zeros(
            b, h, nq, self.num_k_blocks + 1, dtype=torch.int64, device=self.block_idx.device
        )
        idx = torch.where(self.block_idx < 0, self.num_k_blocks, self.block_idx).long()
        src = self.token_mask if self.token_mask is not None else torch.full_like(idx, _ALL_TOKENS)
        bits.scatter_(-1, idx, src)
        return bits[..., : self.num_k_blocks]


# --------------------------------------------------------------------------------------------
# Positions and small helpers


def _q_positions(
    t: int, s: int, bs: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last absolute position of each query block: two ``[NQ]`` int64 tensors."""
    nq = -(-t // bs)
    n = torch.arange(nq, device=device)
    off = s - t
    first = off + n * bs
    last = off + torch.clamp((n + 1) * bs, max=t) - 1
    return first, last


def _causal_block_mask(t: int, s: int, bs: int, device: torch.device) -> torch.Tensor:
    """``[NQ, NK]`` bool: key block j holds at least one key visible to query block n."""
    _, last = _q_positions(t, s, bs, device)
    j = torch.arange(-(-s // bs), device=device)
    return j[None, :] * bs <= last[:, None]


def _window_block_mask(t: int, s: int, bs: int, window: int, device: torch.device) -> torch.Tensor:
    """``[NQ, NK]`` bool: key block j holds a key inside the sliding window of some query of block n."""
    first, last = _q_positions(t, s, bs, device)
    j = torch.arange(-(-s // bs), device=device)
    newest_key = torch.clamp(j * bs + bs - 1, max=s - 1)
    return (j[None, :] * bs <= last[:, None]) & (newest_key[None, :] > first[:, None] - window)


def _sink_local_mask(
    t: int, s: int, bs: int, sink_blocks: int, local_blocks: int, device: torch.device
) -> torch.Tensor:
    """``[NQ, NK]`` bool: the first ``sink_blocks`` and the last ``local_blocks`` causal blocks."""
    _, last = _q_positions(t, s, bs, device)
    j = torch.arange(-(-s // bs), device=device)
    diag = (last // bs)[:, None]
    keep = (j[None, :] < sink_blocks) | (j[None, :] > diag - local_blocks)
    return keep & (j[None, :] <= diag)


def _check_qk(q: torch.Tensor, k: torch.Tensor, block_size: int) -> tuple[int, int, int, int, int]:
    """Validate ``q [B, H, T, D]`` and ``k [B, H_kv, S, D]``; return ``B, H, H_kv, T, S``."""
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(
            f"q and k must be [B, H, T, D] and [B, H_kv, S, D], got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    b, h, t, d = q.shape
    bk, hkv, s, dk = k.shape
    if bk != b or dk != d:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head dim")
    if hkv == 0 or h % hkv:
        raise ValueError(f"query heads H={h} must be a multiple of key heads H_kv={hkv}")
    if s < t:
        raise ValueError(f"need S >= T (keys include the queries), got T={t}, S={s}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    return b, h, hkv, t, s


def _scale(scale: float | None, d: int) -> float:
    return d**-0.5 if scale is None else scale


def _grouped_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``q [B, H, L, D] @ k [B, H_kv, S, D]^T`` per GQA group, fp32: ``[B, H, L, S]``."""
    b, h, length, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    qg = q.float().reshape(b, hkv, h // hkv, length, d)
    logits = torch.matmul(qg, k.float().unsqueeze(2).transpose(-1, -2)) * scale
    return logits.reshape(b, h, length, s)


def _last_query_probs(
    q: torch.Tensor, k: torch.Tensor, scale: float, last_q: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal softmax of the last ``last_q`` queries over all keys: ``([B, H, L, S], positions [L])``."""
    t, s = q.shape[2], k.shape[2]
    length = min(last_q, t)
    pos = torch.arange(s - length, s, device=q.device)
    logits = _grouped_logits(q[:, :, t - length :], k, scale)
    future = torch.arange(s, device=q.device)[None, :] > pos[:, None]
    return logits.masked_fill(future, float("-inf")).softmax(-1), pos


def _pool_blocks(x: torch.Tensor, bs: int) -> torch.Tensor:
    """Mean over blocks of ``bs`` along dim -2 (a short last block is averaged over its own length)."""
    *lead, n, d = x.shape
    nb = -(-n // bs)
    pad = nb * bs - n
    summed = F.pad(x.float(), (0, 0, 0, pad)).reshape(*lead, nb, bs, d).sum(-2)
    counts = torch.full((nb,), float(bs), device=x.device)
    counts[-1] = bs - pad
    return summed / counts[:, None]


def _sum_blocks(x: torch.Tensor, bs: int) -> torch.Tensor:
    """Sum over blocks of ``bs`` along the last dim."""
    n = x.shape[-1]
    nb = -(-n // bs)
    return F.pad(x, (0, nb * bs - n)).reshape(*x.shape[:-1], nb, bs).sum(-1)


def _mean_over_group(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, H, ...] -> [B, H // groups, ...]`` by averaging consecutive heads."""
    b, h = x.shape[:2]
    return x.reshape(b, h // groups, groups, *x.shape[2:]).mean(2)


def _topk_mask(score: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` highest ``score`` entries among ``allowed`` along the last dim."""
    k = min(k, score.shape[-1])
    out = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if k <= 0:
        return out
    masked = score.masked_fill(~allowed, float("-inf"))
    vals, idx = masked.topk(k, dim=-1)
    return out.scatter_(-1, idx, vals > float("-inf"))


def _cover_mask(prob: torch.Tensor, gamma: float) -> torch.Tensor:
    """Smallest set along the last dim whose (normalised) mass reaches ``gamma``: bool mask."""
    total = prob.sum(-1, keepdim=True).clamp_min(1e-30)
    vals, idx = (prob / total).sort(-1, descending=True)
    keep = (vals.cumsum(-1) - vals) < gamma
    keep &= vals > 0
    return torch.zeros_like(keep).scatter_(-1, idx, keep)


def _slash_scores(p: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Attention mass per diagonal ``d = q_pos - k_pos`` of the sampled queries: ``[..., S]``."""
    s = p.shape[-1]
    d = (pos[:, None] - torch.arange(s, device=p.device)[None, :]).clamp_min(0)  # [L, S]
    out = torch.zeros(*p.shape[:-2], s, dtype=p.dtype, device=p.device)
    return out.scatter_add_(-1, d.expand(*p.shape[:-2], -1, -1).flatten(-2), p.flatten(-2))


def _slash_block_scores(slash: torch.Tensor, t: int, s: int, bs: int) -> torch.Tensor:
    """Expected diagonal mass inside each block ``(n, j)``: ``[..., NQ, NK]``.

    Block ``(n, j)`` holds diagonals ``d = c + x`` (``c = first_q - first_k``, ``|x| < bs``) with
    multiplicity ``bs - |x|``, so its slash score is a triangular filter of the per-diagonal mass.
    """
    lead = slash.shape[:-1]
    weight = (bs - torch.arange(-(bs - 1), bs, device=slash.device).abs()).to(slash.dtype) / bs
    padded = F.pad(slash.reshape(-1, 1, s), (2 * bs - 2, bs - 1))
    tri = F.conv1d(padded, weight.view(1, 1, -1)).reshape(
        *lead, -1
    )  # tri[c + bs - 1], c >= -(bs - 1)
    first, _ = _q_positions(t, s, bs, slash.device)
    j = torch.arange(-(-s // bs), device=slash.device)
    centre = (first[:, None] - j[None, :] * bs + bs - 1).clamp(0, tri.shape[-1] - 1)  # [NQ, NK]
    return tri[..., centre.flatten()].reshape(*lead, *centre.shape)


def _diagonals_to_blocks(sel: torch.Tensor, t: int, s: int, bs: int) -> torch.Tensor:
    """Bool ``[..., S]`` selected diagonals -> bool ``[..., NQ, NK]`` blocks they pass through."""
    cs = F.pad(sel.to(torch.int32).cumsum(-1), (1, 0))  # cs[i] = selected diagonals < i
    first, last = _q_positions(t, s, bs, sel.device)
    kf = torch.arange(-(-s // bs), device=sel.device) * bs
    lo = (first[:, None] - kf[None, :] - (bs - 1)).clamp(0, s)
    hi = (last[:, None] - kf[None, :]).clamp(-1, s - 1)
    lead = sel.shape[:-1]
    upper = cs[..., (hi + 1).clamp_min(0).flatten()].reshape(*lead, *lo.shape)
    lower = cs[..., lo.flatten()].reshape(*lead, *lo.shape)
    return (upper - lower > 0) & (hi >= lo)


def _columns_to_blocks(sel: torch.Tensor, bs: int) -> torch.Tensor:
    """Bool ``[..., S]`` selected key columns -> bool ``[..., NK]`` blocks holding one."""
    return _sum_blocks(sel.to(torch.int32), bs) > 0


def _finish(
    mask: torch.Tensor,
    forced: torch.Tensor,
    causal: torch.Tensor,
    *,
    t: int,
    s: int,
    bs: int,
    score: torch.Tensor | None = None,
    max_blocks: int | None = None,
    token_bits: torch.Tensor | None = None,
) -> BlockIndex:
    """Add the forced blocks, clip to causal blocks, cap at ``max_blocks`` by ``score``, build the index."""
    mask = (mask | forced) & causal
    if max_blocks is not None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        assert score is not None
        rank = (
            score.float()
            .masked_fill(~mask, float("-inf"))
            .masked_fill(forced & causal, float("inf"))
        )
        mask = _topk_mask(rank, mask, max_blocks)
    return block_mask_to_index(mask, q_len=t, kv_len=s, block_size=bs, token_bits=token_bits)


# --------------------------------------------------------------------------------------------
# Public: conversion, dense mask, mass


def block_mask_to_index(
    mask: torch.Tensor,
    *,
    q_len: int,
    kv_len: int,
    block_size: int = BLOCK_SIZE,
    token_bits: torch.Tensor | None = None,
) -> BlockIndex:
    """Turn a block mask into a sorted block table.

    Args:
        mask: ``[B, H_idx, NQ, NK]`` bool, selected key blocks per query block. Blocks that no
            query of the row may see (beyond the causal limit) are dropped.
        q_len: ``T``.
        kv_len: ``S >= T``.
        block_size: tokens per block.
        token_bits: optional ``[B, H_idx, NQ, NK]`` int64 kept-token bits per block (bit ``t`` keeps
            token ``t`` of the block); blocks whose bits are all zero are dropped.

    Returns:
        The ``BlockIndex``, rows sorted ascending and padded with ``-1``.
    """
    nq, nk = -(-q_len // block_size), -(-kv_len // block_size)
    if mask.ndim != 4 or mask.shape[-2:] != (nq, nk):
        raise ValueError(
            f"mask must be [B, H, {nq}, {nk}] for T={q_len}, S={kv_len}, got {tuple(mask.shape)}"
        )
    mask = mask.bool() & _causal_block_mask(q_len, kv_len, block_size, mask.device)
    if token_bits is not None:
        mask &= token_bits != 0
    counts = mask.sum(-1)
    maxb = max(int(counts.max().item()) if counts.numel() else 0, 1)
    keyed = torch.where(mask, torch.arange(nk, device=mask.device), nk)
    idx = keyed.sort(-1).values[..., :maxb]
    valid = idx < nk
    block_idx = torch.where(valid, idx, -1).to(torch.int32).contiguous()
    token_mask = None
    if token_bits is not None:
        token_mask = torch.where(
            valid, token_bits.gather(-1, idx.clamp_max(nk - 1)), 0
        ).contiguous()
    return BlockIndex(
        block_idx, counts.to(torch.int32).contiguous(), token_mask, q_len, kv_len, block_size
    )


def dense_mask(index: BlockIndex, *, window: int | None = None) -> torch.Tensor:
    """The token-level mask an index means, with causality and the optional sliding window.

    Args:
        index: the block table.
        window: optional sliding window; key ``s`` is visible to a query at position ``p`` iff
            ``p - window < s <= p``.

    Returns:
        ``[B, H_idx, T, S]`` bool, True where a query attends to a key.
    """
    t, s, bs = index.q_len, index.kv_len, index.block_size
    bits = index.to_token_bits()  # [B, Hi, NQ, NK]
    shifts = torch.arange(bs, device=bits.device, dtype=torch.int64)
    keep = ((bits[..., None] >> shifts) & 1).bool()  # [B, Hi, NQ, NK, bs]
    keep = keep.flatten(-2)[..., :s]  # [B, Hi, NQ, S]
    keep = keep.repeat_interleave(bs, dim=-2)[..., :t, :]  # [B, Hi, T, S]
    qpos = torch.arange(s - t, s, device=bits.device)[:, None]
    kpos = torch.arange(s, device=bits.device)[None, :]
    visible = kpos <= qpos
    if window is not None:
        visible &= qpos - kpos < window
    return keep & visible


def attention_block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    block_size: int = BLOCK_SIZE,
    scale: float | None = None,
    window: int | None = None,
    chunk_elems: int = 1 << 25,
) -> torch.Tensor:
    """Dense causal attention probabilities summed over the queries of each query block.

    One dense pass (in query chunks, reading only the causal prefix of the keys) whose result
    scores any number of indexes with ``attention_mass_kept(..., block_mass=...)``. Rows of a
    longer prefix are valid for a shorter one: ``mass[..., :NQ', :S']`` for ``T' = S' <= T = S``
    when ``T'`` is a multiple of ``block_size``.

    Args:
        q: ``[B, H, T, D]``.
        k: ``[B, H_kv, S, D]``.
        block_size: query rows per block.
        scale: softmax scale, default ``D ** -0.5``.
        window: optional sliding window of the dense attention.
        chunk_elems: score elements per chunk (memory bound).

    Returns:
        ``[B, H, NQ, S]`` fp32; each query block's row sums to its number of queries.
    """
    b, h, hkv, t, s = _check_qk(q, k, block_size)
    sc = _scale(scale, q.shape[-1])
    bs = block_size
    nq = -(-t // bs)
    out = torch.zeros(b, h, nq, s, device=q.device)
    rows = max(bs, (chunk_elems // max(h * s * b, 1)) // bs * bs)
    for start in range(0, t, rows):
        stop = min(start + rows, t)
        keys = s - t + stop  # causal prefix of the keys these queries can see
        logits = _grouped_logits(q[:, :, start:stop], k[:, :, :keys], sc)  # [B, H, c, keys]
        qpos = torch.arange(s - t + start, s - t + stop, device=q.device)[:, None]
        kpos = torch.arange(keys, device=q.device)[None, :]
        visible = kpos <= qpos
        if window is not None:
            visible &= qpos - kpos < window
        p = logits.masked_fill(~visible, float("-inf")).softmax(-1)
        pad = -(stop - start) % bs
        p = F.pad(p, (0, 0, 0, pad)).reshape(b, h, -1, bs, keys).sum(-2)
        out[:, :, start // bs : start // bs + p.shape[2], :keys] += p
    return out


def attention_mass_kept(
    q: torch.Tensor,
    k: torch.Tensor,
    index: BlockIndex,
    *,
    scale: float | None = None,
    window: int | None = None,
    block_mass: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fraction of the dense causal attention mass that the index keeps, averaged over queries.

    Args:
        q: ``[B, H, T, D]``.
        k: ``[B, H_kv, S, D]``.
        index: the block table to score.
        scale: softmax scale, default ``D ** -0.5``.
        window: optional sliding window of the dense attention.
        block_mass: ``attention_block_mass(q, k, ...)`` when already computed (``[B, H, >=NQ, >=S]``,
            sliced to this index); otherwise it is computed here (one dense pass).

    Returns:
        ``[B, H]`` fp32 in ``[0, 1]``.
    """
    b, h, hkv, t, s = _check_qk(q, k, index.block_size)
    bs, nq = index.block_size, index.num_q_blocks
    if block_mass is None:
        block_mass = attention_block_mass(q, k, block_size=bs, scale=scale, window=window)
    mass = block_mass[:, :, :nq, :s]
    bits = index.to_token_bits()  # [B, Hi, NQ, NK]
    shifts = torch.arange(bs, device=bits.device, dtype=torch.int64)
    keep = ((bits[..., None] >> shifts) & 1).bool().flatten(-2)[..., :s]  # [B, Hi, NQ, S]
    keep = keep.repeat_interleave(h // index.num_heads, dim=1)
    return (mass * keep).sum((-1, -2)) / t


# --------------------------------------------------------------------------------------------
# Public: builders


def build_dense_index(
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    *,
    block_size: int = BLOCK_SIZE,
    device: torch.device | str = "cpu",
) -> BlockIndex:
    """Every causal block: the index under which block-sparse attention equals dense causal attention.

    Args:
        batch: ``B``.
        heads: ``H_idx`` (``H`` or ``H_kv``).
        q_len: ``T``.
        kv_len: ``S >= T``.
        block_size: tokens per block.
        device: where the table lives.

    Returns:
        The dense causal ``BlockIndex``.
    """
    causal = _causal_block_mask(q_len, kv_len, block_size, torch.device(device))
    mask = causal.expand(batch, heads, -1, -1)
    return block_mask_to_index(mask, q_len=q_len, kv_len=kv_len, block_size=block_size)


def build_window_index(
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    *,
    window: int,
    block_size: int = BLOCK_SIZE,
    device: torch.device | str = "cpu",
) -> BlockIndex:
    """The blocks a sliding window touches: exact for sliding-window layers when the kernel gets ``window``.

    Args:
        batch: ``B``.
        heads: ``H_idx``.
        q_len: ``T``.
        kv_len: ``S >= T``.
        window: the sliding window (a query at ``p`` sees keys ``p - window < s <= p``).
        block_size: tokens per block.
        device: where the table lives.

    Returns:
        The ``BlockIndex`` (about ``window / block_size + 1`` blocks per query block).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    mask = _window_block_mask(q_len, kv_len, block_size, window, torch.device(device))
    return block_mask_to_index(
        mask.expand(batch, heads, -1, -1), q_len=q_len, kv_len=kv_len, block_size=block_size
    )


def build_vertical_slash_index(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    vertical_blocks: int = 8,
    slash_blocks: int = 8,
    sink_blocks: int = 1,
    local_blocks: int = 1,
    last_q: int = 64,
    scale: float | None = None,
    block_size: int = BLOCK_SIZE,
    share_kv_heads: bool = False,
) -> BlockIndex:
    """MInference's vertical-slash pattern at block granularity.

    The last ``last_q`` queries estimate, per head, the attention mass of every key column
    (vertical) and of every diagonal ``q - k`` (slash). Each query block keeps its sink and local
    blocks, then the ``vertical_blocks`` causal key blocks with the most column mass, then the
    ``slash_blocks`` blocks with the most diagonal mass (a diagonal's mass is spread over the blocks
    it crosses with a triangular weight).

    Args:
        q: ``[B, H, T, D]``.
        k: ``[B, H_kv, S, D]`` (``S >= T``).
        vertical_blocks: column blocks kept per query block.
        slash_blocks: diagonal blocks kept per query block.
        sink_blocks: first key blocks always kept.
        local_blocks: most recent causal key blocks always kept (>= 1 keeps the diagonal).
        last_q: queries used for the estimate (MInference: 64).
        scale: softmax scale, default ``D ** -0.5``.
        block_size: tokens per block.
        share_kv_heads: one pattern per key head (the group's mass averaged) instead of per query head.

    Returns:
        A ``BlockIndex`` with at most ``sink + local + vertical + slash`` blocks per query block.
    """
    b, h, hkv, t, s = _check_qk(q, k, block_size)
    if local_blocks < 1:
        raise ValueError(
            f"local_blocks must be >= 1 so every query sees itself, got {local_blocks}"
        )
    p, pos = _last_query_probs(q, k, _scale(scale, q.shape[-1]), last_q)  # [B, H, L, S]
    if share_kv_heads:
        p = _mean_over_group(p, h // hkv)
    vertical = _sum_blocks(p.sum(-2), block_size)  # [B, Hi, NK]
    slash = _slash_block_scores(_slash_scores(p, pos), t, s, block_size)  # [B, Hi, NQ, NK]
    causal = _causal_block_mask(t, s, block_size, q.device)
    forced = _sink_local_mask(t, s, block_size, sink_blocks, local_blocks, q.device)
    free = causal & ~forced
    v_sel = _topk_mask(
        vertical[:, :, None, :].expand_as(slash), free.expand_as(slash), vertical_blocks
    )
    s_sel = _topk_mask(slash, free & ~v_sel, slash_blocks)
    return _finish(v_sel | s_sel, forced, causal, t=t, s=s, bs=block_size)


def build_flexprefill_index(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    gamma: float = 0.9,
    tau: float = 0.1,
    sink_blocks: int = 1,
    local_blocks: int = 1,
    max_blocks: int | None = None,
    scale: float | None = None,
    block_size: int = BLOCK_SIZE,
    share_kv_heads: bool = False,
) -> BlockIndex:
    """FlexPrefill: per head, a query-aware or a shared vertical-slash pattern, with an adaptive budget.

    The last query block gives the true block distribution ``a_bar`` of its attention; mean-pooled
    queries and keys give the cheap estimate ``a_hat``. When ``sqrt(JSD(a_bar, a_hat)) < tau`` the
    estimate is trusted and each query block keeps the smallest set of blocks covering ``gamma`` of
    its pooled estimate (query-aware). Otherwise the head uses the vertical-slash pattern: the
    smallest sets of key columns and of diagonals each covering ``gamma`` of their estimated mass.

    Args:
        q: ``[B, H, T, D]``.
        k: ``[B, H_kv, S, D]``.
        gamma: attention mass to cover (FlexPrefill: 0.9).
        tau: Jensen-Shannon distance threshold for the query-aware pattern (FlexPrefill: 0.1).
        sink_blocks: first key blocks always kept.
        local_blocks: most recent causal key blocks always kept (>= 1).
        max_blocks: optional cap on blocks per query block (highest estimated mass first).
        scale: softmax scale, default ``D ** -0.5``.
        block_size: tokens per block.
        share_kv_heads: one pattern per key head instead of per query head.

    Returns:
        A ``BlockIndex`` (at most ``max_blocks`` per query block when given).
    """
    b, h, hkv, t, s = _check_qk(q, k, block_size)
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if local_blocks < 1:
        raise ValueError(
            f"local_blocks must be >= 1 so every query sees itself, got {local_blocks}"
        )
    sc = _scale(scale, q.shape[-1])
    bs = block_size
    last_len = t - (-(-t // bs) - 1) * bs  # queries in the last query block
    p, pos = _last_query_probs(q, k, sc, last_len)  # [B, H, L, S]
    causal = _causal_block_mask(t, s, bs, q.device)
    # Pooled estimate for every query block; + log(count) turns block logits into block mass.
    counts = _sum_blocks(torch.ones(s, device=q.device), bs)
    pooled = (
        _grouped_logits(_pool_blocks(q, bs), _pool_blocks(k, bs), sc) + counts.log()
    )  # [B, H, NQ, NK]
    a_hat_all = pooled.masked_fill(~causal, float("-inf")).softmax(-1)
    if share_kv_heads:
        p = _mean_over_group(p, h // hkv)
        a_hat_all = _mean_over_group(a_hat_all, h // hkv)
    a_bar = _sum_blocks(p.mean(-2), bs)  # [B, Hi, NK]
    a_hat = a_hat_all[..., -1, :]
    mid = 0.5 * (a_bar + a_hat)

    def _kl(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(
            x > 0, x * (x.clamp_min(1e-30).log() - y.clamp_min(1e-30).log()), 0.0
        ).sum(-1)

    js_distance = (0.5 * _kl(a_bar, mid) + 0.5 * _kl(a_hat, mid)).clamp_min(0).sqrt()  # [B, Hi]
    query_aware = _cover_mask(a_hat_all, gamma)
    vertical = p.sum(-2)  # [B, Hi, S]
    slash = _slash_scores(p, pos)
    v_cols = _cover_mask(vertical, gamma)
    s_diag = _cover_mask(slash, gamma)
    shared = _columns_to_blocks(v_cols, bs)[:, :, None, :] | _diagonals_to_blocks(s_diag, t, s, bs)
    use_qa = (js_distance < tau)[..., None, None]
    mask = torch.where(use_qa, query_aware, shared)
    score = torch.where(
        use_qa,
        a_hat_all,
        _sum_blocks(vertical, bs)[:, :, None, :] + _slash_block_scores(slash, t, s, bs),
    )
    forced = _sink_local_mask(t, s, bs, sink_blocks, local_blocks, q.device)
    logger.debug("flexprefill: %d of %d heads query-aware", int(use_qa.sum()), use_qa.numel())
    return _finish(mask, forced, causal, t=t, s=s, bs=bs, score=score, max_blocks=max_blocks)


def build_hisa_index(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    candidate_blocks: int = 16,
    top_k: int = 512,
    sink_blocks: int = 1,
    local_blocks: int = 1,
    scale: float | None = None,
    block_size: int = BLOCK_SIZE,
    share_kv_heads: bool = False,
    chunk_rows: int = 64,
) -> BlockIndex:
    """HISA-style two-stage index: pooled block scores prune, then token-level top-k inside survivors.

    Stage 1 scores each key block by its mean-pooled key against the query block's mean query and
    keeps the ``candidate_blocks`` best causal blocks (besides sink and local). Stage 2 scores every
    token of the surviving blocks against the same pooled query and keeps the ``top_k`` best; the
    result keeps those tokens (token bits) plus every token of the sink and local blocks. Stage 2
    only ever reads the candidate blocks' keys.

    Args:
        q: ``[B, H, T, D]``.
        k: ``[B, H_kv, S, D]``.
        candidate_blocks: blocks surviving stage 1 per query block.
        top_k: tokens kept per query block in stage 2 (outside sink and local blocks).
        sink_blocks: first key blocks always kept whole.
        local_blocks: most recent causal key blocks always kept whole (>= 1).
        scale: softmax scale, default ``D ** -0.5``.
        block_size: tokens per block (<= 64, the token bits are one int64 per block).
        share_kv_heads: one pattern per key head instead of per query head.
        chunk_rows: query blocks scored together in stage 2 (memory bound).

    Returns:
        A ``BlockIndex`` with ``token_mask`` set; at most ``sink + local + candidate_blocks`` blocks
        and ``top_k`` selected tokens outside sink and local blocks per query block.
    """
    b, h, hkv, t, s = _check_qk(q, k, block_size)
    if block_size > 64:
        raise ValueError(
            f"token-level selection needs block_size <= 64 (one int64 of bits), got {block_size}"
        )
    if local_blocks < 1:
        raise ValueError(
            f"local_blocks must be >= 1 so every query sees itself, got {local_blocks}"
        )
    sc = _scale(scale, q.shape[-1])
    bs = block_size
    nq, nk = -(-t // bs), -(-s // bs)
    causal = _causal_block_mask(t, s, bs, q.device)
    forced = _sink_local_mask(t, s, bs, sink_blocks, local_blocks, q.device)
    free = causal & ~forced
    q_pool = _pool_blocks(q, bs)  # [B, H, NQ, D]
    counts = _sum_blocks(torch.ones(s, device=q.device), bs)
    block_logits = _grouped_logits(q_pool, _pool_blocks(k, bs), sc) + counts.log()  # [B, H, NQ, NK]
    block_prob = block_logits.masked_fill(~causal, float("-inf")).softmax(-1)
    groups = h // hkv if share_kv_heads else 1
    hi = h // groups
    if share_kv_heads:
        block_prob = _mean_over_group(block_prob, groups)
    cand = _topk_mask(block_prob, free.expand_as(block_prob), candidate_blocks)  # [B, Hi, NQ, NK]

    if top_k >= candidate_blocks * bs:
        # NOTE: stage 2 would keep every token of every candidate (candidates lie strictly
        # before the local blocks, so all their tokens are causal): stage 1 decides alone.
        token_bits = torch.where((cand | forced) & causal, _ALL_TOKENS, 0).to(torch.int64)
        return block_mask_to_index(
            token_bits != 0, q_len=t, kv_len=s, block_size=bs, token_bits=token_bits
        )

    # Stage 2: token scores inside candidate blocks only.
    c = max(min(candidate_blocks, nk), 1)
    cand_ids = (
        torch.where(cand, torch.arange(nk, device=q.device), nk).sort(-1).values[..., :c]
    )  # [B, Hi, NQ, c]
    k_blocks = F.pad(k.float(), (0, 0, 0, nk * bs - s)).reshape(b, hkv, nk, bs, -1)
    _, last = _q_positions(t, s, bs, q.device)
    bits = torch.zeros(b, hi, nq, nk + 1, dtype=torch.int64, device=q.device)
    tok_off = torch.arange(bs, device=q.device)
    for bi in range(b):
        for h_i in range(hi):
            kv = h_i // (hi // hkv)
            heads = slice(h_i * groups, (h_i + 1) * groups)
            for r0 in range(0, nq, chunk_rows):
                r1 = min(r0 + chunk_rows, nq)
                ids = cand_ids[bi, h_i, r0:r1]  # [R, c]
                valid_slot = ids < nk
                keys = k_blocks[bi, kv][ids.clamp_max(nk - 1)].flatten(1, 2)  # [R, c*bs, D]
                qp = q_pool[bi, heads, r0:r1].transpose(0, 1)  # [R, g, D]
                score = torch.bmm(qp, keys.transpose(1, 2)) * sc  # [R, g, c*bs]
                score = score.softmax(-1).mean(1) if groups > 1 else score[:, 0]
                kpos = (ids[..., None] * bs + tok_off).flatten(1)  # [R, c*bs]
                ok = valid_slot.repeat_interleave(bs, 1) & (kpos < s) & (kpos <= last[r0:r1, None])
                score = score.masked_fill(~ok, float("-inf"))
                kk = min(top_k, score.shape[-1])
                if kk <= 0:
                    continue
                vals, top = score.topk(kk, dim=-1)
                chosen = vals > float("-inf")
                slot, tok = top // bs, top % bs
                blk = torch.where(chosen, ids.gather(1, slot), nk)
                contrib = torch.where(chosen, torch.ones_like(tok) << tok, 0)
                # Distinct tokens per block, so a sum of single bits is their bitwise OR.
                bits[bi, h_i, r0:r1].scatter_add_(-1, blk, contrib)
    bits = bits[..., :nk]
    full = torch.where(forced & causal, _ALL_TOKENS, 0).to(torch.int64)
    token_bits = torch.where(forced, full.expand_as(bits), bits)
    mask = (token_bits != 0) & causal
    return block_mask_to_index(mask, q_len=t, kv_len=s, block_size=bs, token_bits=token_bits)
