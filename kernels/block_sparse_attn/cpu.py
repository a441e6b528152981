"""Fast PyTorch path for block-sparse attention: gather only the selected key blocks.

Each row of the block table (one query block of one index head) is split into

- *full* blocks, which every query of the row sees whole (no causal, window or token mask cuts
  them): gathered and attended with PyTorch's fused CPU flash kernel, no mask at all;
- *partial* blocks (the diagonal, the window edge, token-masked blocks): gathered and attended
  with an explicit mask, which is cheap because there are only a few of them.

The two halves are merged with their log-sum-exp. Rows are grouped by their number of full
(partial) blocks so that every batched call is padding-free, and the gathered keys/values are
bounded by ``chunk_bytes``. With GQA, the query heads that share an index head and a key head are
stacked into one row, so their keys are gathered once. Work is proportional to the kept blocks,
so sparsity saves CPU time.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .index import BlockIndex

logger = logging.getLogger(__name__)

__all__ = ["block_sparse_attn_cpu"]

_ALL_TOKENS = -1


def _flash_cpu_op():  # noqa: ANN202 - returns an aten overload packet or None
    """PyTorch's fused CPU attention that also returns the log-sum-exp (None if this build lacks it)."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, visible: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with its log-sum-exp: ``q [R, M, D]``, ``k, v [R, N, D]``, ``visible [R, M, N]``.

    Returns ``(out [R, M, D], lse [R, M])``; rows that see nothing get zeros and ``-inf``.
    """
    op = _flash_cpu_op()
    if visible is None and q.device.type == "cpu" and op is not None:
        out, lse = op(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=scale)
        return out.squeeze(1), lse.squeeze(1)
    scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)  # [R, M, N]
    if visible is not None:
        scores.masked_fill_(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [R, M]
    probs = torch.exp(scores.sub_(lse.unsqueeze(-1)))
    probs = torch.nan_to_num_(probs, nan=0.0)
    return torch.bmm(probs, v), lse


def block_sparse_attn_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: BlockIndex,
    *,
    scale: float,
    window: int | None = None,
    chunk_bytes: int = 1 << 23,
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

    # q rows: [R, g * bs, D] with R = B * H_idx * NQ
    qr = F.pad(q, (0, 0, 0, nq * bs - t)).to(cd).view(b, hi, g, nq, bs, d)
    qr = qr.permute(0, 1, 3, 2, 4, 5).reshape(b * hi * nq, g * bs, d)
    # key/value blocks addressed by a global block id: [B * H_kv * NK, bs, D]
    kb = F.pad(k, (0, 0, 0, nk * bs - s)).to(cd).reshape(b * hkv * nk, bs, d)
    vb = F.pad(v, (0, 0, 0, nk * bs - s)).to(cd).reshape(b * hkv * nk, bs, d)

    rows = b * hi * nq
    maxb = index.block_idx.shape[-1]
    bidx = index.block_idx.reshape(rows, maxb).long()
    cnt = index.block_count.reshape(rows).long()
    r = torch.arange(rows, device=dev)
    n_of_row = r % nq
    hi_of_row = (r // nq) % hi
    b_of_row = r // (nq * hi)
    base = (
        b_of_row * hkv + hi_of_row // per_kv
    ) * nk  # [R] first global block id of the row's key head

    off = s - t
    q_first = off + n_of_row * bs  # [R]
    q_last = off + torch.clamp((n_of_row + 1) * bs, max=t) - 1
    slot = torch.arange(maxb, device=dev)
    valid = slot[None, :] < cnt[:, None]  # [R, MAXB]
    k_first = bidx.clamp_min(0) * bs
    full = valid & (k_first + bs - 1 <= q_first[:, None])
    if window is not None:
        full &= k_first > q_last[:, None] - window
    if index.token_mask is not None:
        full &= index.token_mask.reshape(rows, maxb) == _ALL_TOKENS
    partial = valid & ~full

    out = torch.zeros(rows, g * bs, d, dtype=cd, device=dev)
    lse = torch.full((rows, g * bs), float("-inf"), dtype=torch.float32, device=dev)
    has_partial = bool(partial.any())
    if has_partial:
        out_p = torch.zeros_like(out)
        lse_p = torch.full_like(lse, float("-inf"))

    # NOTE: reused workspaces, filled with index_select(out=...): fresh multi-MB tensors are
    # page-faulted on every call, which on a small VM costs more than the attention itself.
    elem = torch.finfo(cd).bits // 8
    ws_blocks = max(chunk_bytes // (2 * bs * d * elem), maxb)
    ws_rows = max(chunk_bytes // (g * bs * d * elem), 1)
    k_ws = torch.empty(ws_blocks, bs, d, dtype=cd, device=dev)
    v_ws = torch.empty_like(k_ws)
    q_ws = torch.empty(min(ws_rows, rows), g * bs, d, dtype=cd, device=dev)
    tok = torch.arange(bs, device=dev)
    qoff = tok.repeat(g)  # [g * bs] query offsets inside the row's block
    tokens = index.token_mask.reshape(rows, maxb) if index.token_mask is not None else None

    for kind, flags in (("full", full), ("partial", partial)):
        n_sel = flags.sum(-1)
        if not bool(n_sel.any()):
            continue
        # compacted slot order per row: the selected slots first, ascending
        order = torch.where(flags, slot, maxb).sort(-1).values
        for c in torch.unique(n_sel).tolist():
            if c == 0:
                continue
            group = (n_sel == c).nonzero().squeeze(1)
            step = max(1, min(ws_blocks // c, q_ws.shape[0]))
            for i0 in range(0, group.numel(), step):
                sel = group[i0 : i0 + step]
                n = sel.numel()
                slots = order[sel, :c]  # [Rc, c]
                ids = bidx[sel].gather(1, slots)  # [Rc, c] key block ids
                gid = (base[sel, None] + ids).flatten()
                kk = torch.index_select(kb, 0, gid, out=k_ws[: n * c]).view(n, c * bs, d)
                vv = torch.index_select(vb, 0, gid, out=v_ws[: n * c]).view(n, c * bs, d)
                qq = torch.index_select(qr, 0, sel, out=q_ws[:n])  # [Rc, g * bs, D]
                if kind == "full":
                    o, l_ = _attend(qq, kk, vv, scale, None)
                    out.index_copy_(0, sel, o)
                    lse.index_copy_(0, sel, l_)
                    continue
                kpos = (ids[..., None] * bs + tok).flatten(1)  # [Rc, c * bs]
                qpos = q_first[sel, None] + qoff  # [Rc, g * bs]
                vis = (kpos[:, None, :] <= qpos[:, :, None]) & (kpos < s)[:, None, :]
                if window is not None:
                    vis &= (qpos[:, :, None] - kpos[:, None, :]) < window
                if tokens is not None:
                    bits = tokens[sel].gather(1, slots)  # [Rc, c]
                    keep = ((bits[..., None] >> tok) & 1).bool().flatten(1)
                    vis &= keep[:, None, :]
                o, l_ = _attend(qq, kk, vv, scale, vis)
                out_p.index_copy_(0, sel, o)
                lse_p.index_copy_(0, sel, l_)

    if has_partial:
        total = torch.logaddexp(lse, lse_p)
        w_full = torch.nan_to_num(torch.exp(lse - total), nan=0.0).unsqueeze(-1)
        w_part = torch.nan_to_num(torch.exp(lse_p - total), nan=0.0).unsqueeze(-1)
        out = out * w_full.to(cd) + out_p * w_part.to(cd)

    out = out.view(b, hi, nq, g, bs, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h, nq * bs, d)
    return out[:, :, :t].to(q.dtype).contiguous()
