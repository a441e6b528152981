from __future__ import annotations

import numpy as np
import pytest

from retrieval import TermWeights, rm3, rocchio_dense, rocchio_sparse


def tw(d: dict[int, float]) -> TermWeights:
    return TermWeights.from_dict(d)


def test_rm3_by_hand() -> None:
    query = tw({1: 1.0, 2: 1.0})
    fb = [tw({1: 2.0, 3: 2.0}), tw({3: 1.0, 4: 3.0})]
    # P(t|R) = mean_d tf/|d|: t1 .25, t3 .25 + .125 = .375, t4 .375; top 2 -> t3, t4 (.5 each)
    out = rm3(query, fb, n_terms=2, original_weight=0.6).to_dict()
    assert out == pytest.approx({1: 0.3, 2: 0.3, 3: 0.2, 4: 0.2})


def test_rm3_weighted_docs_and_edge_cases() -> None:
    query = tw({1: 2.0})
    fb = [tw({5: 1.0}), tw({6: 1.0})]
    out = rm3(query, fb, n_terms=5, original_weight=0.5, doc_weights=[3.0, 1.0]).to_dict()
    assert out == pytest.approx({1: 0.5, 5: 0.375, 6: 0.125})
    assert rm3(query, [], n_terms=5) is query
    assert rm3(query, fb, original_weight=1.0) is query
    assert rm3(query, [tw({})], n_terms=5) is query


def test_rocchio_sparse_by_hand() -> None:
    out = rocchio_sparse(
        tw({1: 1.0}), [tw({1: 1.0, 2: 2.0}), tw({3: 4.0})], alpha=1.0, beta=0.5, n_terms=2
    )
    # 1 + .5*.5 = 1.25 ; t2 .5*1 = .5 ; t3 .5*2 = 1.0 -> keep t1, t3
    assert out.to_dict() == pytest.approx({1: 1.25, 3: 1.0})


def test_rocchio_dense_by_hand() -> None:
    q = np.array([1.0, 0.0], dtype=np.float32)
    fb = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    out = rocchio_dense(q, fb, alpha=1.0, beta=1.0)
    np.testing.assert_allclose(out, np.array([1.0, 1.0]) / np.sqrt(2), atol=1e-6)
    assert rocchio_dense(q, np.zeros((0, 2), np.float32)) is q
