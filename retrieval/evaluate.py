"""Effectiveness metrics over BEIR-layout collections (trec_eval conventions).

nDCG follows trec_eval's `ndcg_cut` (as BEIR tables do): linear gains (the grade) and log2
discounts. Exponential gains (2^grade - 1, Burges et al.) are an option (`NdcgGain`); they
reproduce the reference numbers in `../shared/data/SOURCES.md` (graded Cranfield: .342 for BM25,
where linear gains give .352). With binary judgements the two agree. A chunk counts as relevant
for MAP, recall and MRR when its grade is above zero. Only queries with at least one relevant
judgement are evaluated (the BEIR convention).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._types import Hit
from .config import NdcgGain

logger = logging.getLogger(__name__)

__all__ = [
    "BeirCollection",
    "average_precision",
    "evaluate_run",
    "latency_summary",
    "load_beir",
    "ndcg_at_k",
    "recall_at_k",
    "reciprocal_rank",
]

Qrels = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class BeirCollection:
    """A test collection: texts by id, queries by id, graded judgements by query then doc."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def judged_queries(self) -> dict[str, str]:
        """Queries with at least one relevant document, in file order."""
        return {
            qid: text
            for qid, text in self.queries.items()
            if any(g > 0 for g in self.qrels.get(qid, {}).values())
        }


def load_beir(directory: Path) -> BeirCollection:
    """Read `corpus.jsonl`, `queries.jsonl` and `qrels.tsv` (or `qrels/test.tsv`).

    Document text is the title and the text joined by a space.

    Args:
        directory: The collection folder.

    Returns:
        The collection, named after the folder.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a line cannot be parsed.
    """
    directory = Path(directory)
    qrels_path = directory / "qrels.tsv"
    if not qrels_path.is_file() and (directory / "qrels" / "test.tsv").is_file():
        qrels_path = directory / "qrels" / "test.tsv"
    for path in (directory / "corpus.jsonl", directory / "queries.jsonl", qrels_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; a BEIR folder holds corpus.jsonl, queries.jsonl, qrels.tsv"
            )
    corpus = {}
    for rec in _read_jsonl(directory / "corpus.jsonl"):
        title, text = rec.get("title") or "", rec.get("text") or ""
        corpus[str(rec["_id"])] = f"{title} {text}".strip()
    queries = {str(rec["_id"]): rec["text"] for rec in _read_jsonl(directory / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for lineno, row in enumerate(reader, start=1):
            if not row or (lineno == 1 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise ValueError(
                    f"{qrels_path}:{lineno}: expected query-id, corpus-id, score; got {row}"
                )
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    return BeirCollection(directory.name, corpus, queries, qrels)


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from exc
    return out


def ndcg_at_k(
    ranked: Sequence[str],
    qrels: Mapping[str, int],
    k: int = 10,
    *,
    gain: NdcgGain | str = NdcgGain.LINEAR,
) -> float:
    """nDCG@k with log2 discounts.

    Args:
        ranked: Retrieved ids, best first.
        qrels: Grade of each judged id (missing means 0).
        k: Cut-off.
        gain: `linear` (the grade, as trec_eval) or `exponential` (2^grade - 1).

    Returns:
        A value in [0, 1]; 0 when nothing is relevant.
    """
    value = _gain_function(gain)
    dcg = sum(value(qrels.get(d, 0)) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(value(g) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _gain_function(gain: NdcgGain | str) -> Callable[[int], float]:
    try:
        gain = NdcgGain(gain)
    except ValueError:
        raise ValueError(
            f"unknown nDCG gain {gain!r}; use one of {[g.value for g in NdcgGain]}"
        ) from None
    if gain == NdcgGain.EXPONENTIAL:
        return lambda grade: float(2**grade - 1) if grade > 0 else 0.0
    return lambda grade: float(grade) if grade > 0 else 0.0


def average_precision(ranked: Sequence[str], qrels: Mapping[str, int]) -> float:
    """Average precision of the whole ranked list (relevant unretrieved documents count as 0)."""
    n_rel = sum(1 for g in qrels.values() if g > 0)
    if n_rel == 0:
        return 0.0
    found, total = 0, 0.0
    for i, d in enumerate(ranked):
        if qrels.get(d, 0) > 0:
            found += 1
            total += found / (i + 1)
    return total / n_rel


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 100) -> float:
    """Fraction of the relevant documents found in the top k."""
    n_rel = sum(1 for g in qrels.values() if g > 0)
    if n_rel == 0:
        return 0.0
    return sum(1 for d in ranked[:k] if qrels.get(d, 0) > 0) / n_rel


def reciprocal_rank(ranked: Sequence[str], qrels: Mapping[str, int]) -> float:
    """1 / rank of the first relevant document; 0 if none is retrieved."""
    for i, d in enumerate(ranked):
        if qrels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def evaluate_run(
    run: Mapping[str, Sequence[Hit]], qrels: Qrels, *, gain: NdcgGain | str = NdcgGain.LINEAR
) -> dict[str, float]:
    """Mean nDCG@10, MAP, Recall@100 and MRR over the judged queries.

    Args:
        run: Hits per query id; a judged query missing from the run scores 0.
        qrels: Grades per query id, then document id.
        gain: nDCG's gain of a grade (`ndcg_at_k`).

    Returns:
        `{"ndcg@10": x, "map": x, "recall@100": x, "mrr": x}`.
    """
    _gain_function(gain)  # an unknown gain fails before any work
    per_query = {"ndcg@10": [], "map": [], "recall@100": [], "mrr": []}
    for qid, judged in qrels.items():
        if not any(g > 0 for g in judged.values()):
            continue
        ranked = [h.chunk_id for h in run.get(qid, [])]
        per_query["ndcg@10"].append(ndcg_at_k(ranked, judged, 10, gain=gain))
        per_query["map"].append(average_precision(ranked, judged))
        per_query["recall@100"].append(recall_at_k(ranked, judged, 100))
        per_query["mrr"].append(reciprocal_rank(ranked, judged))
    return {name: float(np.mean(vals)) if vals else 0.0 for name, vals in per_query.items()}


def latency_summary(ms: Sequence[float]) -> dict[str, float]:
    """`{"p50_ms": x, "p95_ms": x}` of per-query latencies in milliseconds."""
    if not ms:
        return {"p50_ms": 0.0, "p95_ms": 0.0}
    arr = np.asarray(ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95))}
