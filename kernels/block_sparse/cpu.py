"""Fast PyTorch path for block-sparse attention: gather only the selected key blocks.

Each row of the block table (one query block of one index head) is split into

- *full* blocks, which every query of the row sees whole (no causal, window or token mask cuts
  them): gathered and attended with PyTorch's fused CPU flash kernel, and
- *partial* blocks (the diagonal, the window edge, token-masked blocks): gathered and attended
  with an explicit mask, which is cheap because there are only a few of them.

The two halves are merged with their log-sum-exp. Rows are sorted by their number of blocks and
cut into large chunks of similar rows; within a chunk, rows with fewer blocks are padded and the
padding is hidden by a key mask that broadcasts over the queries (free in the fused kernel). With
GQA, the query heads that share an index head and a key head are stacked into one row, so their
keys are gathered once. Work is proportional to the kept blocks, so sparsity saves CPU time.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .index import BlockIndex

logger = logging.getLogger(__name__)

__all__ = ["block_sparse_attn_cpu"]

_ALL_TOKENS = -1
# NOTE: a chunk may pad a row by at most this fraction of the chunk's widest row.
_MAX_PAD = 0.2


def _flash_cpu_op():  # noqa: ANN202 - returns an aten op or None
    """PyTorch's fused CPU attention that also returns the log-sum-exp (None if this build lacks it)."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [R, M, D]``, ``k, v [R, N, D]``, additive ``mask [R, 1 or M, N]`` (0 or -inf).

    Returns ``(out [R, M, D], lse [R, M])``. A query whose mask row is all ``-inf`` gets zeros;
    its log-sum-exp is unspecified (callers that merge must set it to ``-inf``).
    """
    op = _flash_cpu_op()
    if q.device.type == "cpu" and op is not None:
        attn_mask = None if mask is None else mask.unsqueeze(1)
        out, lse = op(
            q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), attn_mask=attn_mask, scale=scale
        )
        return out.squeeze(1), lse.squeeze(1)
    scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)  # [R, M, N]
    if mask is not None:
        scores.add_(mask)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.nan_to_num_(torch.exp(scores.sub_(lse.unsqueeze(-1))), nan=0.0)
    return torch.bmm(probs, v), lse


def _additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool keep-mask -> additive mask (0 where kept, -inf elsewhere)."""
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(
        ~keep, float("-inf")
    )


def _gather_rows(src: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``src[idx]`` for a 2-D ``src`` into the workspace ``out``, in one parallel region.

    NOTE: ``index_select`` and ``index_copy_`` copy large rows one parallel ``copy_`` at a time;
    under CPU contention each such region can wait a scheduler slice (~10 ms here).
    """
    return torch.gather(src, 0, idx[:, None].expand(-1, src.shape[1]), out=out[: idx.numel()])


def _scatter_rows(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """``dst[idx] = src`` for 2-D views, in one parallel region."""
    dst.scatter_(0, idx[:, None].expand(-1, dst.shape[1]), src)


def _chunks(
    counts: torch.Tensor, max_blocks: int, max_rows: int
) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Rows with ``counts > 0``, widest first, and their cut into chunks of similar rows.

    Returns ``(perm, chunks)``: ``perm`` lists the rows in processing order and each chunk is a
    slice ``(start, stop, width)`` of it whose rows hold at most ``width`` blocks.
    """
    perm = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[perm].tolist()
    n = sum(1 for c in sorted_counts if c > 0)
    chunks = []
    i = 0
    while i < n:
        width = sorted_counts[i]
        fit = min(max(1, max_blocks // width), max_rows)
        j = i + 1
        while j < n and j - i < fit and sorted_counts[j] >= (1 - _MAX_PAD) * width:
            j += 1
        chunks.append((i, j, width))
        i = j
    return perm[:n], chunks


def block_sparse_attn_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    *,
    scale: float,
    window: int | None = None,
    chunk_bytes: int = 1 << 27,
) -> torch.Tensor:
    """Block-sparse causal attention that reads only the selected blocks (inputs already validated).

    Args:
        q: ``[B, H, T, D]`` contiguous.
        k: ``[B, H_kv, S, D]`` contiguous.
        v: ``[B, H_kv, S, D]`` contiguous.
        index: block table with ``H_idx`` heads (``H_kv | H_idx | H``).
        scale: softmax scale.
        window: optional sliding window.
        chunk_bytes: bound on the gathered keys + values of one batched call.

    Returns:
        ``[B, H, T, D]`` in ``q.dtype``.
    """
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    hi, bs = index.num_heads, index.block_size
    nq, nk = -(-t // bs), -(-s // bs)
    g = h // hi  # query heads per index head (stacked into one row)
    per_kv = hi // hkv  # index heads per key head
    cd = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    dev = q.device
    m = g * bs  # queries per row

    # q and the output as "units": one query block of one head, [B * H * NQ, bs * D]
    qp = (q if nq * bs == t else F.pad(q, (0, 0, 0, nq * bs - t))).to(cd)
    q_units = qp.reshape(b * h * nq, bs * d)
    out_full = torch.empty(b, h, nq * bs, d, dtype=cd, device=dev)
    out_units = out_full.view(b * h * nq, bs * d)
    # key/value blocks addressed by a global block id: [B * H_kv * NK, bs * D]
    pad_kv = (0, 0, 0, nk * bs - s)
    kb = (k if nk * bs == s else F.pad(k, pad_kv)).to(cd).reshape(b * hkv * nk, bs * d)
    vb = (v if nk * bs == s else F.pad(v, pad_kv)).to(cd).reshape(b * hkv * nk, bs * d)

    rows = b * hi * nq
    maxb = index.block_idx.shape[-1]
    # one extra slot (block 0 of the row's key head) stands for padding
    bidx = F.pad(index.block_idx.reshape(rows, maxb).long().clamp_min(0), (0, 1))
    cnt = index.block_count.reshape(rows).long()
    r = torch.arange(rows, device=dev)
    n_of_row = r % nq
    hi_of_row = (r // nq) % hi
    b_of_row = r // (nq * hi)
    base = (b_of_row * hkv + hi_of_row // per_kv) * nk  # [R] first block id of the row's key head
    head0 = b_of_row * h + hi_of_row * g  # [R] first query head of the row
    units = (head0[:, None] + torch.arange(g, device=dev)) * nq + n_of_row[:, None]  # [R, g]

    off = s - t
    q_first = off + n_of_row * bs  # [R]
    q_last = off + torch.clamp((n_of_row + 1) * bs, max=t) - 1
    slot = torch.arange(maxb, device=dev)
    valid = slot[None, :] < cnt[:, None]  # [R, MAXB]
    k_first = bidx[:, :maxb] * bs
    # "full": every query of the row sees every key of the block that the token bits keep
    full = valid & (k_first + bs - 1 <= q_first[:, None])
    if window is not None:
        full &= k_first > q_last[:, None] - window
    partial = valid & ~full
    tokens = None
    if index.token_mask is not None:
        tokens = F.pad(index.token_mask.reshape(rows, maxb), (0, 1), value=_ALL_TOKENS)

    # NOTE: few, large calls. Rows are permuted once per part so that chunks are slices, and
    # gathers run in one parallel region each: on a shared 2-core machine every parallel region
    # can wait a scheduler slice, so hundreds of small ops cost more than the attention itself.
    elem = torch.finfo(cd).bits // 8
    ws_blocks = max(chunk_bytes // (2 * bs * d * elem), maxb)
    k_ws = torch.empty(ws_blocks, bs * d, dtype=cd, device=dev)
    v_ws = torch.empty_like(k_ws)
    tok = torch.arange(bs, device=dev)
    qoff = tok.repeat(g)  # [g * bs] query offsets inside the row's block

    n_full = full.sum(-1)
    lse = torch.full((rows, m), float("-inf"), dtype=torch.float32, device=dev)
    empty_rows = (n_full == 0).nonzero().squeeze(1)
    if empty_rows.numel():
        idx = units[empty_rows].flatten()
        _scatter_rows(out_units, idx, torch.zeros(idx.numel(), bs * d, dtype=cd, device=dev))
    partial_result = None
    for kind, flags in (("full", full), ("partial", partial)):
        n_sel = flags.sum(-1)
        if not bool(n_sel.any()):
            continue
        perm, chunks = _chunks(n_sel, ws_blocks, rows)
        # per row (in processing order): its selected slots first, ascending, then padding (= MAXB)
        slots = torch.where(flags[perm], slot, maxb).sort(-1).values[:, : chunks[0][2]]
        ids = bidx[perm].gather(1, slots)  # key block ids, 0 for padding
        gid = base[perm, None] + ids
        ok = slots < maxb
        row_units = units[perm].flatten()
        qs = _gather_rows(
            q_units, row_units, torch.empty(row_units.numel(), bs * d, dtype=cd, device=dev)
        )
        if kind == "partial":
            o_part = torch.empty(perm.numel(), m, d, dtype=cd, device=dev)
            l_part = torch.empty(perm.numel(), m, dtype=torch.float32, device=dev)
        for i0, i1, width in chunks:
            n = i1 - i0
            flat = gid[i0:i1, :width].reshape(-1)
            kk = _gather_rows(kb, flat, k_ws).view(n, width * bs, d)
            vv = _gather_rows(vb, flat, v_ws).view(n, width * bs, d)
            qq = qs[i0 * g : i1 * g].view(n, m, d)
            all_ok = bool(ok[i0:i1, :width].all())
            key_ok = ok[i0:i1, :width].repeat_interleave(bs, dim=1)  # [Rc, width * bs]
            if tokens is not None:
                bits = tokens[perm[i0:i1]].gather(1, slots[i0:i1, :width])  # [Rc, width]
                key_ok = key_ok & ((bits[..., None] >> tok) & 1).bool().flatten(1)
                all_ok = all_ok and bool((bits == _ALL_TOKENS).all())
            if kind == "full":
                # padding and token bits drop whole keys: one mask row broadcast over the queries
                mask = None if all_ok else _additive(key_ok[:, None, :], cd)
                o, l_ = _attend(qq, kk, vv, scale, mask)
                _scatter_rows(out_units, units[perm[i0:i1]].flatten(), o.reshape(n * g, bs * d))
                _scatter_rows(lse, perm[i0:i1], l_)
                continue
            kpos = (ids[i0:i1, :width, None] * bs + tok).flatten(1)  # [Rc, width * bs]
            qpos = q_first[perm[i0:i1], None] + qoff  # [Rc, g * bs]
            vis = (kpos[:, None, :] <= qpos[:, :, None]) & (key_ok & (kpos < s))[:, None, :]
            if window is not None:
                vis &= (qpos[:, :, None] - kpos[:, None, :]) < window
            o, l_ = _attend(qq, kk, vv, scale, _additive(vis, cd))
            o_part[i0:i1] = o
            l_part[i0:i1] = l_.masked_fill_(~vis.any(-1), float("-inf"))
        if kind == "partial":
            partial_result = (perm, o_part, l_part)

    if partial_result is not None:
        # merge each row's partial half into its full half by log-sum-exp
        perm, o_p, l_p = partial_result
        row_units = units[perm].flatten()
        o_f = _gather_rows(
            out_units, row_units, torch.empty(row_units.numel(), bs * d, dtype=cd, device=dev)
        )
        l_f = lse[perm]
        total = torch.logaddexp(l_f, l_p)
        w_f = torch.nan_to_num_(torch.exp(l_f - total), nan=0.0).unsqueeze(-1).to(cd)
        w_p = torch.nan_to_num_(torch.exp(l_p - total), nan=0.0).unsqueeze(-1).to(cd)
        merged = o_f.view_as(o_p).mul_(w_f).add_(o_p.mul_(w_p))
        _scatter_rows(out_units, row_units, merged.view(-1, bs * d))

    out = out_full if nq * bs == t else out_full[:, :, :t]
    return out.to(q.dtype).contiguous()
