"""Folio's metrics against trec_eval's (pytrec_eval): nDCG@10, MAP, R@100 and RR agree per query
on graded judgements, on a generated run and on a BM25 run over the real Cranfield collection."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import pytrec_eval

from retrieval import (
    Hit,
    HybridRetriever,
    average_precision,
    evaluate_run,
    load_beir,
    ndcg_at_k,
    recall_at_k,
    reciprocal_rank,
)

TREC_MEASURES = {"ndcg_cut.10", "map", "recall.100", "recip_rank"}
FOLIO_TO_TREC = {
    "ndcg@10": "ndcg_cut_10",
    "map": "map",
    "recall@100": "recall_100",
    "mrr": "recip_rank",
}


def _trec(run: dict[str, list[Hit]], qrels: dict[str, dict[str, int]]) -> dict[str, dict]:
    """trec_eval's per-query values; the run's scores must have no ties (trec_eval breaks ties
    by document id, Folio keeps the list order)."""
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES)
    return evaluator.evaluate({q: {h.chunk_id: h.score for h in hits} for q, hits in run.items()})


def _assert_same_as_trec(run: dict[str, list[Hit]], qrels: dict[str, dict[str, int]]) -> None:
    trec = _trec(run, qrels)
    judged = [q for q, grades in qrels.items() if any(g > 0 for g in grades.values())]
    assert judged and set(judged) <= set(trec)
    for qid in judged:
        ranked, grades = [h.chunk_id for h in run[qid]], qrels[qid]
        expected = trec[qid]
        assert ndcg_at_k(ranked, grades, 10) == pytest.approx(expected["ndcg_cut_10"], abs=1e-9)
        assert average_precision(ranked, grades) == pytest.approx(expected["map"], abs=1e-9)
        assert recall_at_k(ranked, grades, 100) == pytest.approx(expected["recall_100"], abs=1e-9)
        assert reciprocal_rank(ranked, grades) == pytest.approx(expected["recip_rank"], abs=1e-9)
    means = evaluate_run(run, qrels)
    for ours, theirs in FOLIO_TO_TREC.items():
        mean = sum(trec[q][theirs] for q in judged) / len(judged)
        assert means[ours] == pytest.approx(mean, abs=1e-9), ours


def _generated(seed: int = 7) -> tuple[dict[str, list[Hit]], dict[str, dict[str, int]]]:
    """30 queries over 150 documents: 40 judged per query with grades 0-3, runs of 120 documents
    (judged and unjudged, some relevant ones left out) with distinct scores."""
    rng = random.Random(seed)
    docs = [f"d{i:03d}" for i in range(150)]
    qrels, run = {}, {}
    for q in range(30):
        qid = f"q{q}"
        qrels[qid] = {d: rng.choice([0, 0, 1, 2, 3]) for d in rng.sample(docs, 40)}
        ranked = rng.sample(docs, 120)
        run[qid] = [Hit(d, float(120 - i)) for i, d in enumerate(ranked)]
    qrels["q_none"] = {"d000": 0}  # no relevant document: not evaluated by either
    run["q_none"] = [Hit("d000", 1.0)]
    return run, qrels


def test_metrics_equal_trec_eval_on_a_generated_graded_run() -> None:
    run, qrels = _generated()
    assert {g for grades in qrels.values() for g in grades.values()} == {0, 1, 2, 3}
    _assert_same_as_trec(run, qrels)


def test_exponential_gains_differ_from_trec_eval_on_graded_judgements() -> None:
    run, qrels = _generated()
    trec = _trec(run, qrels)
    gaps = [
        abs(ndcg_at_k([h.chunk_id for h in run[q]], qrels[q], 10, gain="exponential") - v)
        for q, v in ((q, trec[q]["ndcg_cut_10"]) for q in qrels if q != "q_none")
    ]
    assert max(gaps) > 0.01


def test_metrics_equal_trec_eval_on_cranfield(ir_dir: Path) -> None:
    folder = ir_dir / "cranfield"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"{folder} not found (set FOLIO_SHARED_DATA)")
    collection = load_beir(folder)
    assert max(g for grades in collection.qrels.values() for g in grades.values()) > 1  # graded
    retriever = HybridRetriever.create()  # BM25 alone: no model weights
    retriever.add(collection.corpus.items())
    run = {}
    for qid, text in collection.judged_queries().items():
        hits = retriever.search(text, 200, mode="bm25")
        # Distinct scores, the same order: trec_eval sorts by score and breaks ties by id.
        run[qid] = [Hit(h.chunk_id, float(len(hits) - i)) for i, h in enumerate(hits)]
    _assert_same_as_trec(run, {q: collection.qrels[q] for q in run})
