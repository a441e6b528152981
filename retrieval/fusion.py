"""Fusion of ranked runs: normalise each run's scores, then interpolate; or reciprocal-rank fusion.

Pure functions over lists of hits. A run is cut at some depth, so a chunk missing from a run
gets that run's floor: 0 after min-max, the run's lowest z-score after z-normalisation (pyserini's
min-fill). An empty run carries no information and is skipped; a run whose scores are all equal
(or that holds one hit) maps its hits to 1 and the floor to 0. Ties in the fused score are broken
by chunk id, so fusion is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ._types import Hit
from .config import Normalization

logger = logging.getLogger(__name__)

__all__ = ["fuse", "fuse_rrf", "normalize"]


def normalize(
    run: Sequence[Hit], method: Normalization = Normalization.MINMAX
) -> tuple[list[Hit], float]:
    """Put one run's scores on a common scale.

    Args:
        run: Hits, any order.
        method: MINMAX ((s - min) / (max - min)) or ZSCORE ((s - mean) / std).

    Returns:
        The normalised hits in the same order, and the floor value for chunks the run lacks.

    Raises:
        ValueError: For RRF, which works on ranks (use `fuse_rrf`).
    """
    if method == Normalization.RRF:
        raise ValueError("RRF has no score normalisation; call fuse_rrf")
    if not run:
        return [], 0.0
    scores = np.fromiter((h.score for h in run), dtype=np.float64, count=len(run))
    lo, hi = float(scores.min()), float(scores.max())
    if not np.isfinite(scores).all():
        raise ValueError(f"run has non-finite scores (min {lo}, max {hi})")
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1.0):
        return [Hit(h.chunk_id, 1.0) for h in run], 0.0
    if method == Normalization.MINMAX:
        norm = (scores - lo) / (hi - lo)
        floor = 0.0
    else:
        norm = (scores - scores.mean()) / scores.std()
        floor = float(norm.min())
    return [Hit(h.chunk_id, float(s)) for h, s in zip(run, norm.tolist(), strict=True)], floor


def fuse(
    runs: Sequence[Sequence[Hit]],
    weights: Sequence[float] | None = None,
    *,
    normalization: Normalization = Normalization.MINMAX,
    k: int | None = None,
    rrf_k: int = 60,
) -> list[Hit]:
    """Interpolate runs: `s(d) = sum_i w_i * norm_i(d)`, with the floor where run i lacks d.

    Args:
        runs: Any number of runs; empty runs are skipped.
        weights: One per run (default: equal); runs of weight 0 are skipped.
        normalization: MINMAX, ZSCORE, or RRF (delegates to `fuse_rrf`).
        k: Keep the best k (default: all chunks of all runs).
        rrf_k: Rank offset, for RRF only.

    Returns:
        Fused hits, best first; ties broken by chunk id.

    Raises:
        ValueError: If weights and runs differ in number, or a weight is negative.
    """
    weights = _check_weights(runs, weights)
    if normalization == Normalization.RRF:
        return fuse_rrf(runs, weights, k=k, rrf_k=rrf_k)
    acc: dict[str, float] = {}
    floors = 0.0
    seen: list[dict[str, float]] = []
    used: list[tuple[float, float]] = []
    for run, w in zip(runs, weights, strict=True):
        if not run or w == 0.0:
            continue
        hits, floor = normalize(run, normalization)
        table = {h.chunk_id: h.score for h in hits}
        seen.append(table)
        used.append((w, floor))
        floors += w * floor
    if not seen:
        return []
    if len(seen) == 1:
        (w, _), table = used[0], seen[0]
        return _top(((cid, w * s) for cid, s in table.items()), k)
    for table, (w, floor) in zip(seen, used, strict=True):
        for cid, s in table.items():
            # every chunk starts at the sum of floors; a run that has it replaces its floor
            acc[cid] = acc.get(cid, floors) + w * (s - floor)
    return _top(acc.items(), k)


def fuse_rrf(
    runs: Sequence[Sequence[Hit]],
    weights: Sequence[float] | None = None,
    *,
    k: int | None = None,
    rrf_k: int = 60,
) -> list[Hit]:
    """Reciprocal-rank fusion: `s(d) = sum_i w_i / (rrf_k + rank_i(d))`, ranks from 1.

    Each run is ranked by its own scores (ties by chunk id); a chunk missing from a run gets
    nothing from it. Empty runs and runs of weight 0 are skipped.

    Returns:
        Fused hits, best first; ties broken by chunk id.
    """
    weights = _check_weights(runs, weights)
    acc: dict[str, float] = {}
    for run, w in zip(runs, weights, strict=True):
        if not run or w == 0.0:
            continue
        ranked = sorted(run, key=lambda h: (-h.score, h.chunk_id))
        for rank, h in enumerate(ranked, start=1):
            acc[h.chunk_id] = acc.get(h.chunk_id, 0.0) + w / (rrf_k + rank)
    return _top(acc.items(), k)


def _check_weights(runs: Sequence[Sequence[Hit]], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs; pass one weight per run")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative, got {list(weights)}")
    return [float(w) for w in weights]


def _top(items, k: int | None) -> list[Hit]:
    ranked = sorted(items, key=lambda kv: (-kv[1], kv[0]))
    if k is not None:
        ranked = ranked[:k]
    return [Hit(cid, float(s)) for cid, s in ranked]
