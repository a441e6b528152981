"""The answerability check in the web app: its stage switch and its Transparency lines."""

from __future__ import annotations

from app.web.chat import AskOptions
from app.web.panels import STAGE_NAMES, STAGE_NOTES, summary_markdown
from pipeline.answering.types import Answerability, AnswerStats, StageStats


def _stats(answerable: bool) -> AnswerStats:
    check = Answerability(
        score=0.81 if answerable else 0.12,
        threshold=0.4,
        answerable=answerable,
        verify_yes=0.3,
        features={"verify_log_odds": -0.85, "top_hit": 0.7, "top_item": 0.5},
        draft="1,874 employees",
    )
    stage = StageStats("answerability", int(answerable), 1, 31, 1093, 120.0)
    return AnswerStats(stages=(stage,), answerability=check)


def test_the_switch_reaches_the_request() -> None:
    assert AskOptions(answerability=True).overrides()["answerability"] is True
    assert AskOptions().overrides()["answerability"] is False


def test_the_panel_shows_the_score_and_a_declined_draft() -> None:
    declined = summary_markdown(_stats(False))
    assert "**Answerability** 0.12 (threshold 0.40" in declined
    assert "Not answerable" in declined and "1,874 employees" in declined
    kept = summary_markdown(_stats(True))
    assert "→ answerable" in kept and "draft" not in kept
    assert "answerability" in STAGE_NAMES and "answerability" in STAGE_NOTES
