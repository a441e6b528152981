"""Typed and computed answers in the web app: their stage switches and Transparency lines."""

from __future__ import annotations

from app.web.chat import AskOptions
from app.web.panels import STAGE_NAMES, STAGE_NOTES, stage_legend, summary_markdown
from pipeline.answering.types import AnswerStats, StageStats


def test_the_switches_reach_the_request() -> None:
    # Defaults as AnswerConfig's: typed answers on, computed answers off (BENCHMARKS, issue 23).
    assert AskOptions().overrides()["typed"] is True and AskOptions().overrides()["compute"] is False
    flipped = AskOptions(typed=False, compute=True).overrides()
    assert flipped["typed"] is False and flipped["compute"] is True


def test_the_panel_shows_the_type_and_the_evaluated_expression() -> None:
    stage = StageStats("compute", 1, 1, 12, 64, 900.0)
    stats = AnswerStats(
        stages=(stage,), answer_type="number", expression="(150 - 120) / 120 * 100", computed="25"
    )
    summary = summary_markdown(stats)
    assert "**Answer type** number" in summary
    assert "**Computed** 25 = `(150 - 120) / 120 * 100`" in summary
    assert "compute" in STAGE_NAMES and "expression" in STAGE_NOTES["compute"]
    assert "Compute (evaluated / tried)" in stage_legend(stats)


def test_the_panel_says_why_a_computation_was_not_used() -> None:
    stats = AnswerStats(
        stages=(StageStats("compute", 0, 1, 9, 64, 800.0),),
        answer_type="integer",
        expression="999 / 3",
        compute_note="operands not in the evidence: 999",
    )
    summary = summary_markdown(stats)
    assert "**Compute** tried `999 / 3`, not used: operands not in the evidence: 999" in summary
    assert "**Computed**" not in summary
    assert "Answer type" not in summary_markdown(AnswerStats())
