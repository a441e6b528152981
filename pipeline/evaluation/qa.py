"""`folio eval qa`: answer MMLongBench-style questions and score them by answer format.

Each question is asked of its own document. The report holds accuracy and F1 (the benchmark's
definitions, see `pipeline.evaluation.scoring`), "Not answerable" precision and recall, the evidence-page
recall of the citations, median time to first token, decode speed, peak memory and, per
question, the prediction, its score and the per-stage stats.
"""

from __future__ import annotations

import ast
import json
import logging
import resource
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.answering.answer_types import AnswerType, short_answer
from pipeline.answering.batch import BatchQuestion
from pipeline.answering.types import Answer, AnswerStats, without_markers
from pipeline.evaluation.scoring import ScoredAnswer, aggregate, score_answer

logger = logging.getLogger(__name__)

__all__ = [
    "QAQuestion",
    "batch_questions",
    "draft_prediction",
    "load_qa_questions",
    "patched_rows",
    "peak_rss_mb",
    "score_run",
]


@dataclass(frozen=True)
class QAQuestion:
    """A question with its gold answer, answer format and evidence pages."""

    doc_id: str  # the file name in the documents folder
    question: str
    answer: str
    answer_format: str
    evidence_pages: tuple[int, ...]
    sources: tuple[str, ...] = ()


def load_qa_questions(path: Path) -> list[QAQuestion]:
    """Questions from an MMLongBench-style JSON list or JSONL file.

    Raises:
        ValueError: A question lacks doc_id, question, answer or answer_format.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        rows = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON or JSONL ({exc.msg}, line {exc.lineno})") from exc
    out = []
    for row in rows:
        try:
            out.append(
                QAQuestion(
                    doc_id=row["doc_id"],
                    question=row["question"],
                    answer=str(row["answer"]),
                    answer_format=str(row["answer_format"]),
                    evidence_pages=tuple(int(p) for p in _as_list(row.get("evidence_pages", "[]"))),
                    sources=tuple(_as_list(row.get("evidence_sources", "[]"))),
                )
            )
        except (KeyError, ValueError, SyntaxError) as exc:
            raise ValueError(
                f"{path}: a question lacks doc_id, question, answer or answer_format ({exc})"
            ) from exc
    return out


def batch_questions(
    questions: Sequence[QAQuestion], doc_ids: dict[str, str]
) -> list[BatchQuestion]:
    """One batch question per QA question, restricted to its document.

    Args:
        questions: The questions.
        doc_ids: Library document id of each document file name; a missing one makes the
            question fail (recorded, scored 0).
    """
    out = []
    for position, q in enumerate(questions):
        doc = doc_ids.get(q.doc_id)
        if doc is None:
            out.append(
                BatchQuestion(
                    q.question, None, str(position), error=f"{q.doc_id}: not in the library"
                )
            )
        else:
            out.append(BatchQuestion(q.question, (doc,), str(position)))
    return out


def _as_list(value: Any) -> list:
    """A list, or a list written as a string ("[3, 5]")."""
    if isinstance(value, list):
        return value
    return list(ast.literal_eval(value)) if value else []


def _by_format(scored: Sequence[ScoredAnswer]) -> dict[str, dict[str, float]]:
    """Questions and accuracy (mean score) per answer format."""
    out: dict[str, dict[str, float]] = {}
    for fmt in sorted({s.answer_format for s in scored}):
        scores = [s.score for s in scored if s.answer_format == fmt]
        out[fmt] = {"questions": len(scores), "accuracy": round(statistics.fmean(scores), 4)}
    return out


def _by_source(
    questions: Sequence[QAQuestion], scored: Sequence[ScoredAnswer]
) -> dict[str, dict[str, float]]:
    """Questions and accuracy per evidence source (a question with two sources counts in both)."""
    out: dict[str, dict[str, float]] = {}
    for source in sorted({src for q in questions for src in q.sources}):
        scores = [s.score for q, s in zip(questions, scored, strict=True) if source in q.sources]
        out[source] = {"questions": len(scores), "accuracy": round(statistics.fmean(scores), 4)}
    return out


def draft_prediction(draft: str, question: str, answer_type: str = "", computed: str = "") -> str:
    """What `score_run` would have scored had the answerability check kept the draft: its
    computed value, else the draft cut to the answer type, else the draft without markers."""
    if computed:
        return computed
    if answer_type:
        return short_answer(draft, AnswerType(answer_type), question)
    return without_markers(draft)


def _answerability_row(q: QAQuestion, stats: AnswerStats | None) -> dict[str, Any] | None:
    check = stats.answerability if stats is not None else None
    if check is None:
        return None
    kept = draft_prediction(check.draft, q.question, stats.answer_type, stats.computed)
    return {
        "score": round(check.score, 4),
        "answerable": check.answerable,
        "draft": check.draft,
        "draft_score": round(score_answer(kept, q.answer, q.answer_format), 4),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def score_run(
    questions: Sequence[QAQuestion], answers: Sequence[Answer], *, peak_mb: float | None = None
) -> dict[str, Any]:
    """The report of one run (the `--json` layout of `folio eval qa`).

    Args:
        questions: The questions, in order.
        answers: One answer per question, same order (a failed one scores 0).
        peak_mb: Peak RSS to report (default: this process's).

    Returns:
        `{"questions", "accuracy", "f1", "not_answerable": {"precision", "recall"},
        "citation_page_recall", "citation_page_precision", "ttft_ms_p50", "total_ms_p50",
        "tokens_per_s", "peak_rss_mb", "by_format", "by_source", "per_question"}`; an answer's `short` form is scored when it has one, else `plain`.
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    scored: list[ScoredAnswer] = []
    per_question: list[dict[str, Any]] = []
    citation_recalls: list[float] = []
    cited_total = cited_on_evidence = 0
    ttfts: list[float] = []
    totals_ms: list[float] = []
    decode_tokens = decode_s = 0.0
    for position, (q, a) in enumerate(zip(questions, answers, strict=True)):
        # Typed answers are scored by their short form; without them, the answer as written.
        prediction = (a.short or a.plain) if a.error is None else ""
        # A failed question neither answers nor declines: it scores 0 either way.
        score = score_answer(prediction, q.answer, q.answer_format) if a.error is None else 0.0
        scored.append(
            ScoredAnswer(
                prediction if a.error is None else "<error>", q.answer, q.answer_format, score
            )
        )
        gold = set(q.evidence_pages)
        cited = sorted({c.page for c in a.citations})
        prompt_pages = sorted({e.page for e in a.evidence})
        citation_recall = len(gold & set(cited)) / len(gold) if gold else None
        prompt_recall = len(gold & set(prompt_pages)) / len(gold) if gold else None
        if citation_recall is not None and q.answer_format != "None":
            citation_recalls.append(citation_recall)
            cited_total += len(cited)
            cited_on_evidence += len(gold & set(cited))
        stats = a.stats
        if stats is not None and stats.total_ms:
            totals_ms.append(stats.total_ms)
        if stats is not None and stats.new_tokens:
            ttfts.append(stats.ttft_ms)
            if stats.new_tokens > 1 and stats.decode_ms > 0:
                decode_tokens += stats.new_tokens - 1
                decode_s += stats.decode_ms / 1000
        per_question.append(
            {
                "index": position,
                "doc_id": q.doc_id,
                "question": q.question,
                "answer_format": q.answer_format,
                "gold": q.answer,
                "prediction": a.text,
                "short": a.short,
                "score": round(score, 4),
                "declined": a.not_answerable,
                "sources": list(q.sources),
                "evidence_pages": list(q.evidence_pages),
                "cited_pages": cited,
                "prompt_pages": prompt_pages,
                "citation_page_recall": citation_recall,
                "prompt_page_recall": prompt_recall,
                "ttft_ms": round(stats.ttft_ms, 1) if stats else None,
                "total_ms": round(stats.total_ms, 1) if stats else None,
                "tokens_per_s": round(stats.tokens_per_s, 2) if stats else None,
                "prompt_tokens": stats.prompt_tokens if stats else None,
                "new_tokens": stats.new_tokens if stats else None,
                "answer_type": stats.answer_type if stats else "",
                "expression": stats.expression if stats else "",
                "computed": stats.computed if stats else "",
                "compute_note": stats.compute_note if stats else "",
                # NOTE: the check's score and the draft it may have replaced, so one run also
                # scores the pipeline without the check (`bench.levers`).
                "answerability": _answerability_row(q, stats),
                "stages": {
                    s.name: {
                        "kept_items": s.kept_items,
                        "total_items": s.total_items,
                        "kept_tokens": s.kept_tokens,
                        "total_tokens": s.total_tokens,
                        "ms": round(s.ms, 1),
                    }
                    for s in (stats.stages if stats else ())
                },
                "error": a.error,
            }
        )
    totals = aggregate(scored)
    return {
        "questions": totals.questions,
        "accuracy": round(totals.accuracy, 4),
        "f1": round(totals.f1, 4),
        "not_answerable": {
            "precision": round(totals.na_precision, 4),
            "recall": round(totals.na_recall, 4),
        },
        "citation_page_recall": round(statistics.fmean(citation_recalls), 4)
        if citation_recalls
        else 0.0,
        # Of the pages the answers to answerable questions cite, the share that are evidence pages.
        "citation_page_precision": round(cited_on_evidence / cited_total, 4)
        if cited_total
        else 0.0,
        "ttft_ms_p50": round(statistics.median(ttfts), 1) if ttfts else 0.0,
        "total_ms_p50": round(statistics.median(totals_ms), 1) if totals_ms else 0.0,
        "tokens_per_s": round(decode_tokens / decode_s, 2) if decode_s > 0 else 0.0,
        "peak_rss_mb": round(peak_mb if peak_mb is not None else peak_rss_mb(), 1),
        "by_format": _by_format(scored),
        "by_source": _by_source(questions, scored),
        "per_question": per_question,
    }


def _row_key(row: Mapping[str, Any]) -> tuple[str, str]:
    return row["doc_id"], row["question"]


def patched_rows(
    base: Sequence[Mapping[str, Any]], patch: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """A report's `per_question` rows with those of the questions a smaller run answered replaced
    by that run's rows: a lever that changes only some questions (computed answers, a parse
    setting that touches some documents) is measured by answering those alone.

    Raises:
        ValueError: `patch` holds a question `base` does not (reports of different files).
    """
    replacement = {_row_key(r): r for r in patch}
    missing = set(replacement) - {_row_key(r) for r in base}
    if missing:
        doc_id, question = sorted(missing)[0]
        raise ValueError(
            f"{len(missing)} patch question(s) not in the base report, e.g. {doc_id}: {question!r}"
        )
    return [replacement.get(_row_key(r), r) for r in base]
