"""`folio eval pages`: how well each retrieval mode finds the evidence pages of MMLongBench-style
questions, ranking the pages within each question's document.

A page's score is the score of its best chunk; pages are ranked by it. Questions without
evidence pages ("Not answerable") are left out; a question whose document failed to ingest counts
as a miss, so the numbers never look better by losing hard documents.
"""

from __future__ import annotations

import ast
import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.library.search import LibraryIndex
from retrieval import RetrievalMode

logger = logging.getLogger(__name__)

CUTOFFS = (1, 5, 10)
SOURCES = {
    "Pure-text (Plain-text)": "text",
    "Table": "table",
    "Chart": "chart",
    "Figure": "figure",
    "Generalized-text (Layout)": "layout",
}


@dataclass(frozen=True)
class PageQuestion:
    doc_id: str  # the file name in the documents folder
    question: str
    evidence_pages: tuple[int, ...]
    sources: tuple[str, ...]


def load_questions(path: Path) -> list[PageQuestion]:
    """Questions with evidence pages from an MMLongBench-style JSON (list) or JSONL file.

    Raises:
        ValueError: the file is not such a list of questions.
    """
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON or JSONL ({exc.msg}, line {exc.lineno})") from exc
    out = []
    for row in rows:
        try:
            pages = _as_list(row["evidence_pages"])
            sources = _as_list(row.get("evidence_sources", "[]"))
            out.append(PageQuestion(row["doc_id"], row["question"], tuple(int(p) for p in pages), tuple(sources)))
        except (KeyError, ValueError, SyntaxError) as exc:
            raise ValueError(f"{path}: a question lacks doc_id, question or evidence_pages ({exc})") from exc
    return out


def _as_list(value: Any) -> list:
    if isinstance(value, list):
        return value
    return list(ast.literal_eval(value)) if value else []


def page_ranking(index: LibraryIndex, question: str, chunk_ids: set[str], mode: RetrievalMode) -> list[int]:
    """Pages of one document, best first (by their best chunk)."""
    hits = index.retriever.search(question, k=max(1, len(chunk_ids)), mode=mode, allowed=chunk_ids)
    pages: list[int] = []
    for hit in index.describe(hits):
        if hit.page not in pages:
            pages.append(hit.page)
    return pages


def recall_at(ranked: Sequence[int], gold: set[int], k: int) -> float:
    return len(set(ranked[:k]) & gold) / len(gold)


def ndcg_at(ranked: Sequence[int], gold: set[int], k: int) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, p in enumerate(ranked[:k]) if p in gold)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(gold))))
    return dcg / ideal if ideal else 0.0


def evaluate_pages(
    questions: Sequence[PageQuestion],
    index: LibraryIndex,
    doc_chunks: dict[str, set[str]],
    modes: Sequence[RetrievalMode],
    on_question: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Recall@1/5/10 and nDCG@5 of evidence pages per mode, overall and by evidence source.

    Args:
        questions: questions with evidence pages (others are skipped).
        index: the library index holding the documents.
        doc_chunks: chunk ids of each document, keyed by the questions' doc_id (file name);
            a missing key means the document is not in the library (counted as a miss).
        modes: retrieval modes to compare.
    """
    answerable = [q for q in questions if q.evidence_pages]
    report: dict[str, Any] = {"questions": len(answerable), "modes": {}}
    for mode in modes:
        totals: dict[str, float] = defaultdict(float)
        by_source: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for q in answerable:
            chunks = doc_chunks.get(q.doc_id)
            ranked = page_ranking(index, q.question, chunks, mode) if chunks else []
            gold = set(q.evidence_pages)
            scores = {f"recall@{k}": recall_at(ranked, gold, k) for k in CUTOFFS}
            scores["ndcg@5"] = ndcg_at(ranked, gold, 5)
            for name, value in scores.items():
                totals[name] += value
            for source in {SOURCES.get(s, "other") for s in q.sources} or {"other"}:
                by_source[source]["questions"] += 1
                for name, value in scores.items():
                    by_source[source][name] += value
            if on_question is not None:
                on_question()
        n = max(1, len(answerable))
        row = {name: round(value / n, 4) for name, value in totals.items()}
        row["by_source"] = {
            source: {"questions": int(v["questions"])}
            | {name: round(v[name] / v["questions"], 4) for name in v if name != "questions"}
            for source, v in sorted(by_source.items())
        }
        report["modes"][mode.value] = row
    return report


def documents_by_name(index: LibraryIndex, names: Sequence[str], docs_dir: Path) -> dict[str, set[str]]:
    """Chunk ids of each named document (file in `docs_dir`), matched by content hash."""
    from pipeline.ingestion.parse import sha256_file

    out: dict[str, set[str]] = {}
    for name in sorted(set(names)):
        path = docs_dir / name
        if not path.is_file():
            logger.warning("%s: not in %s; its questions count as misses", name, docs_dir)
            continue
        try:
            out[name] = index.chunk_ids_of([sha256_file(path)])
        except LookupError:
            logger.warning("%s: not in the library; its questions count as misses", name)
    return out
