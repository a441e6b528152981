"""Pseudo-relevance feedback: rewrite a query from the top chunks of a first run.

RM3 for BM25 (Lavrenko and Croft's relevance model, interpolated with the query, as in
Anserini), Rocchio for SPLADE's term weights, and Rocchio / Vector-PRF for dense vectors
(Li et al., "Pseudo-relevance feedback with dense retrievers in Pyserini", and
"To Interpolate or not to Interpolate", SIGIR 2022). Pure functions; the indexes supply the
feedback chunks' stored rows and vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ._postings import TermWeights

logger = logging.getLogger(__name__)

__all__ = ["rm3", "rocchio_dense", "rocchio_sparse"]


def _sum_rows(rows: Sequence[TermWeights], scale: Sequence[float]) -> TermWeights:
    """sum_i scale_i * rows_i, as one TermWeights."""
    terms = np.concatenate([r.terms for r in rows])
    vals = np.concatenate(
        [r.weights.astype(np.float64) * s for r, s in zip(rows, scale, strict=True)]
    )
    uniq, inv = np.unique(terms, return_inverse=True)
    return TermWeights(uniq.astype(np.int64), np.bincount(inv, weights=vals).astype(np.float32))


def _add(a: TermWeights, wa: float, b: TermWeights, wb: float) -> TermWeights:
    return _sum_rows([a, b], [wa, wb])


def rm3(
    query: TermWeights,
    feedback: Sequence[TermWeights],
    *,
    n_terms: int = 10,
    original_weight: float = 0.5,
    doc_weights: Sequence[float] | None = None,
) -> TermWeights:
    """RM3 query expansion.

    The relevance model is `P(t|R) = sum_d w_d * tf(t, d) / |d|` over the feedback chunks,
    cut to its `n_terms` most likely terms and renormalised; the new query is
    `original_weight * q / |q| + (1 - original_weight) * P(.|R)`.

    Args:
        query: Query term weights (counts).
        feedback: Term frequencies of each feedback chunk.
        n_terms: Expansion terms kept.
        original_weight: Weight of the original query, in [0, 1].
        doc_weights: Weight of each feedback chunk (default: equal).

    Returns:
        The expanded query; the query itself when there is no feedback.
    """
    rows = [r for r in feedback if len(r.terms) and float(r.weights.sum()) > 0]
    if not rows or original_weight >= 1.0:
        return query
    if doc_weights is None:
        w = np.full(len(rows), 1.0 / len(rows))
    else:
        w = np.asarray(
            [
                dw
                for r, dw in zip(feedback, doc_weights, strict=True)
                if len(r.terms) and float(r.weights.sum()) > 0
            ]
        )
        w = np.clip(w, 0.0, None)
        w = w / w.sum() if w.sum() > 0 else np.full(len(rows), 1.0 / len(rows))
    model = _sum_rows(
        rows, [wi / float(r.weights.sum()) for r, wi in zip(rows, w.tolist(), strict=True)]
    )
    model = model.top(n_terms)
    model = TermWeights(model.terms, model.weights / max(float(model.weights.sum()), 1e-12))
    qsum = float(query.weights.sum())
    if qsum <= 0:
        return model
    return _add(query, original_weight / qsum, model, 1.0 - original_weight)


def rocchio_sparse(
    query: TermWeights,
    feedback: Sequence[TermWeights],
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    n_terms: int = 64,
) -> TermWeights:
    """Rocchio on term weights: `alpha * q + beta * mean(feedback)`, cut to `n_terms` terms.

    Returns:
        The new query; the query itself when there is no feedback.
    """
    if not feedback:
        return query
    centroid = _sum_rows(list(feedback), [1.0 / len(feedback)] * len(feedback))
    return _add(query, alpha, centroid, beta).top(n_terms)


def rocchio_dense(
    query: np.ndarray, feedback: np.ndarray, *, alpha: float = 1.0, beta: float = 0.5
) -> np.ndarray:
    """Vector PRF: `alpha * q + beta * mean(feedback)`, L2-normalised.

    Args:
        query: float32 [D].
        feedback: float32 [n, D] vectors of the feedback chunks (n may be 0).

    Returns:
        float32 [D]; the query itself when there is no feedback.
    """
    if len(feedback) == 0:
        return query
    new = alpha * query.astype(np.float32) + beta * feedback.mean(axis=0, dtype=np.float32)
    norm = float(np.linalg.norm(new))
    return (new / norm if norm > 0 else query).astype(np.float32)
