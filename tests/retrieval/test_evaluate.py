from __future__ import annotations

import math
from pathlib import Path

import pytest

from retrieval import (
    Hit,
    NdcgGain,
    average_precision,
    evaluate_run,
    latency_summary,
    load_beir,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)


def test_ndcg_by_hand_with_graded_judgements() -> None:
    qrels = {"a": 3, "b": 1, "c": 2}
    ranked = ["b", "x", "a"]
    dcg = 1 / math.log2(2) + 3 / math.log2(4)  # linear gains: the grade itself
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, qrels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, qrels, 10, gain="linear") == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "c", "b"], qrels, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "a"], qrels, 1) == 0.0
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0


def test_ndcg_with_exponential_gains_on_request() -> None:
    qrels = {"a": 3, "b": 1, "c": 2}
    ranked = ["b", "x", "a"]
    dcg = (2**1 - 1) / math.log2(2) + (2**3 - 1) / math.log2(4)
    idcg = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, qrels, 10, gain=NdcgGain.EXPONENTIAL) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, qrels, 10, gain="exponential") != pytest.approx(
        ndcg_at_k(ranked, qrels, 10)
    )
    binary = {"a": 1, "c": 1}
    assert ndcg_at_k(ranked, binary, 10, gain="exponential") == ndcg_at_k(ranked, binary, 10)
    with pytest.raises(ValueError, match="unknown nDCG gain 'cubic'"):
        ndcg_at_k(ranked, qrels, 10, gain="cubic")
    run = {"q": [Hit(d, 1.0) for d in ranked]}
    assert evaluate_run(run, {"q": qrels}, gain="exponential")["ndcg@10"] == pytest.approx(
        dcg / idcg
    )


def test_ap_recall_rr_by_hand() -> None:
    qrels = {"a": 1, "b": 1, "c": 1, "n": 0}
    ranked = ["x", "a", "n", "b"]
    assert average_precision(ranked, qrels) == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert recall_at_k(ranked, qrels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, qrels, 100) == pytest.approx(2 / 3)
    assert reciprocal_rank(ranked, qrels) == pytest.approx(1 / 2)
    assert reciprocal_rank(["n", "x"], qrels) == 0.0


def test_evaluate_run_averages_judged_queries_only() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    run = {"q1": [Hit("a", 1.0)], "q3": [Hit("c", 1.0)]}  # q2 missing -> zeros
    out = evaluate_run(run, qrels)
    assert out == pytest.approx({"ndcg@10": 0.5, "map": 0.5, "recall@100": 0.5, "mrr": 0.5})


def test_latency_summary() -> None:
    assert latency_summary([]) == {"p50_ms": 0.0, "p95_ms": 0.0}
    out = latency_summary([float(i) for i in range(1, 101)])
    assert out["p50_ms"] == pytest.approx(50.5)
    assert out["p95_ms"] == pytest.approx(95.05)


def test_load_beir(tmp_path: Path, write_beir) -> None:
    col = load_beir(write_beir(tmp_path / "tiny"))
    assert col.name == "tiny"
    assert col.corpus["d1"] == "Wing lift The wing of the aircraft produces lift."
    assert col.corpus["d2"] == "Boundary layers on flat plates."
    assert col.qrels == {"1": {"d1": 2}, "2": {"d3": 1}}
    assert list(col.judged_queries()) == ["1", "2"]
    with pytest.raises(FileNotFoundError, match="qrels"):
        load_beir(tmp_path / "nothing")
