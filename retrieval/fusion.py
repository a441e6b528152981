"""Fusion of ranked runs: normalise each run's scores, then interpolate; or reciprocal-rank fusion.

Pure functions over lists of hits. A run is cut at some depth, so a chunk missing from a run
gets that run's floor: 0 after min-max, the run's lowest z-score after z-normalisation (pyserini's
min-fill). An empty run carries no information and is skipped; a run whose scores are all equal
(or that holds one hit) maps its hits to 1 and the floor to 0. Ties in the fused score are broken
by chunk id, so fusion is deterministic.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from ._types import Hit
from .config import Normalization, RetrievalConfig

logger = logging.getLogger(__name__)

__all__ = ["fuse", "fuse_arrays", "fuse_rrf", "normalize"]


Run = tuple[Sequence[str], np.ndarray]  # chunk ids [n] and their scores [n]


def _normalized(scores: np.ndarray, method: Normalization) -> tuple[np.ndarray, float]:
    """Normalised scores [n] float64 and the floor for chunks the run lacks."""
    scores = np.asarray(scores, dtype=np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    if not np.isfinite(scores).all():
        raise ValueError(f"run has non-finite scores (min {lo}, max {hi})")
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1.0):
        return np.ones_like(scores), 0.0
    if method == Normalization.MINMAX:
        return (scores - lo) / (hi - lo), 0.0
    norm = (scores - scores.mean()) / scores.std()
    return norm, float(norm.min())


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
        ValueError: For RRF, which works on ranks (use `fuse_rrf`), or non-finite scores.
    """
    if method == Normalization.RRF:
        raise ValueError("RRF has no score normalisation; call fuse_rrf")
    if not run:
        return [], 0.0
    norm, floor = _normalized(np.fromiter((h.score for h in run), np.float64, len(run)), method)
    return [Hit(h.chunk_id, s) for h, s in zip(run, norm.tolist(), strict=True)], floor


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
    arrays = [
        ([h.chunk_id for h in run], np.fromiter((h.score for h in run), np.float64, len(run)))
        for run in runs
    ]
    ids, scores = fuse_arrays(arrays, weights, normalization=normalization, k=k, rrf_k=rrf_k)
    return [Hit(c, s) for c, s in zip(ids, scores.tolist(), strict=True)]


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
    return fuse(runs, weights, normalization=Normalization.RRF, k=k, rrf_k=rrf_k)


def fuse_runs(runs: Mapping[str, Run], config: RetrievalConfig, k: int) -> Run:
    """`fuse_arrays` over named runs, with the weights and normalisation of `config`."""
    f = config.fusion
    return fuse_arrays(
        list(runs.values()),
        [config.weight(name) for name in runs],
        normalization=f.normalization,
        k=k,
        rrf_k=f.rrf_k,
    )


Q = TypeVar("Q")


def fuse_with_feedback(
    query: Q,
    runs: Callable[[Q, int], dict[str, Run]],
    feedback: Callable[[Q, Sequence[str]], Q],
    config: RetrievalConfig,
    k: int,
    *,
    prf: bool,
) -> list[Hit]:
    """The fused modes (Li et al.): fuse the first-pass runs; with `prf`, rewrite the query from
    the top `fb_docs` fused chunks, run again and fuse once more, the first fused run kept in
    with weight `keep_first_pass` (interpolation before and after feedback).

    Args:
        query: An encoded query, whatever form `runs` and `feedback` take.
        runs: (query, depth) -> one run per retriever in the fusion.
        feedback: (query, feedback chunk ids) -> the rewritten query.
    """
    depth = max(config.depth, k)
    fused = fuse_runs(runs(query, depth), config, depth if prf else k)
    if prf:
        second = runs(feedback(query, fused[0][: config.prf.fb_docs]), depth)
        if config.prf.keep_first_pass > 0:
            second["first"] = fused
        fused = fuse_runs(second, config, k)
    ids, scores = fused
    return [Hit(c, s) for c, s in zip(ids[:k], scores[:k].tolist(), strict=True)]


def fuse_arrays(
    runs: Sequence[Run],
    weights: Sequence[float] | None = None,
    *,
    normalization: Normalization = Normalization.MINMAX,
    k: int | None = None,
    rrf_k: int = 60,
) -> tuple[list[str], np.ndarray]:
    """`fuse` over runs given as (chunk ids, scores) pairs; returns fused ids and scores.

    The hybrid retriever's fast path: no Hit objects until the final top k.
    """
    weights = _check_weights(runs, weights)
    acc: dict[str, float] = {}
    base = 0.0  # every chunk starts at the sum of the floors; a run that has it adds (s - floor)
    for (ids, scores), w in zip(runs, weights, strict=True):
        if len(ids) == 0 or w == 0.0:
            continue
        if normalization == Normalization.RRF:
            order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), ids[i]))
            contrib = np.empty(len(ids), dtype=np.float64)
            contrib[order] = w / (rrf_k + np.arange(1, len(ids) + 1, dtype=np.float64))
        else:
            norm, floor = _normalized(scores, normalization)
            contrib = w * (norm - floor)
            base += w * floor
        get = acc.get
        for cid, v in zip(ids, contrib.tolist(), strict=True):
            acc[cid] = get(cid, 0.0) + v

    def key(kv: tuple[str, float]) -> tuple[float, str]:
        return (-kv[1], kv[0])

    if k is not None and k < len(acc) // 4:
        ranked = heapq.nsmallest(k, acc.items(), key=key)
    else:
        ranked = sorted(acc.items(), key=key)[:k]
    return [c for c, _ in ranked], np.asarray([v + base for _, v in ranked], dtype=np.float64)


def _check_weights(runs: Sequence, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs; pass one weight per run")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative, got {list(weights)}")
    return [float(w) for w in weights]
