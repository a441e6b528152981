"""`score_run`'s report: breakdown by evidence source, cited-page precision, total time, and the
answerability check's draft scored as if the check had kept it."""

import pytest

from pipeline.answering.types import Answer, Answerability, AnswerStats, Citation
from pipeline.evaluation.qa import QAQuestion, draft_prediction, patched_rows, score_run


def _question(
    answer: str, fmt: str, pages: tuple[int, ...], sources: tuple[str, ...]
) -> QAQuestion:
    return QAQuestion("doc.pdf", "How many rows does Table 2 have?", answer, fmt, pages, sources)


def _cite(page: int) -> Citation:
    return Citation("d", "doc.pdf", page, (0.0, 0.0, 1.0, 1.0), "q", 1)


def test_report_breaks_down_by_source_and_scores_the_check_s_draft() -> None:
    check = Answerability(
        score=0.3,
        threshold=0.8,
        answerable=False,
        verify_yes=0.2,
        features={},
        draft="It has 12 rows [1].",
    )
    questions = [
        _question("12", "Int", (2,), ("Table", "Chart")),
        _question("5", "Int", (4,), ("Table",)),
        _question("Not answerable", "None", (), ()),
    ]
    answers = [
        Answer("q", "Not answerable", not_answerable=True,
               stats=AnswerStats(total_ms=900.0, answer_type="integer", answerability=check)),
        Answer("q", "5 [1]", citations=(_cite(4), _cite(5)), stats=AnswerStats(total_ms=300.0)),
        Answer("q", "Not answerable", not_answerable=True, stats=AnswerStats(total_ms=100.0)),
    ]  # fmt: skip
    report = score_run(questions, answers, peak_mb=1.0)
    assert report["by_source"] == {
        "Chart": {"questions": 1, "accuracy": 0.0},
        "Table": {"questions": 2, "accuracy": 0.5},
    }
    assert report["citation_page_precision"] == 0.5  # page 4 of the cited 4 and 5
    assert report["total_ms_p50"] == 300.0
    rows = report["per_question"]
    assert rows[0]["answerability"] == {
        "score": 0.3, "answerable": False, "draft": "It has 12 rows [1].", "draft_score": 1.0,
    }  # fmt: skip
    assert rows[1]["answerability"] is None and rows[0]["sources"] == ["Table", "Chart"]


def test_draft_prediction_is_what_the_report_would_have_scored() -> None:
    question = "How many rows does Table 2 have?"
    assert draft_prediction("It has 12 rows [1].", question) == "It has 12 rows ."
    assert draft_prediction("It has 12 rows [1].", question, "integer") == "12"
    assert draft_prediction("About 12 [2]", question, "number", computed="12.5") == "12.5"


def _row(question: str, score: float) -> dict:
    return {"doc_id": "a.pdf", "question": question, "score": score}


def test_a_smaller_run_patches_only_the_questions_it_answered() -> None:
    base = [_row("q1", 0.0), _row("q2", 0.0), _row("q3", 1.0)]
    rows = patched_rows(base, [_row("q2", 1.0)])
    assert [r["score"] for r in rows] == [0.0, 1.0, 1.0] and rows[0] is base[0]
    with pytest.raises(ValueError, match="1 patch question"):
        patched_rows(base, [_row("elsewhere", 1.0)])
