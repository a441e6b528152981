"""Deciding "Not answerable" on purpose: a verification question after the draft answer, read
from the model's next-token probabilities, combined with retrieval strength.

After the model drafts its answer, the same conversation goes on with one more user turn, "Does
the evidence state the answer to the question? Reply yes or no.", and the model's probabilities
of starting its reply with Yes or No are read (`GeneratorBase.choice_logprobs`): on torch from
the logits, with the answer prompt's KV cache serving everything but the new turn; on OpenVINO
by forcing each word, its prefix cache serving the prompt. The log-odds of yes against no, the
best retrieval score and the best evidence item's score go into a logistic model fitted on the
dev documents' train split (`bench/answerability.py`; the coefficients and where they came from
are in `answerability.json` beside this module). Below the threshold the answer becomes "Not
answerable" and cites nothing; the draft is kept in `AnswerStats.answerability`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.generator import Generator, PromptInputs
from pipeline.answering.types import Answerability, Prepared, StageStats

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_FILE",
    "FEATURES",
    "NO_WORDS",
    "VERIFY_QUESTION",
    "YES_WORDS",
    "Calibration",
    "check_answerability",
    "decide",
    "features_of",
    "load_calibration",
    "verify_log_odds",
]

VERIFY_QUESTION = "Does the evidence state the answer to the question? Reply yes or no."
YES_WORDS = ("Yes", "yes")
NO_WORDS = ("No", "no")
FEATURES = ("verify_log_odds", "top_hit", "top_item")
CALIBRATION_FILE = Path(__file__).with_name("answerability.json")


@dataclass(frozen=True)
class Calibration:
    """A logistic decision: P(answerable) = sigmoid(bias + sum(weights[f] * features[f])).

    Attributes:
        weights: One weight per feature name (`FEATURES`).
        bias: The intercept.
        threshold: Decline below this probability.
        source: Where the numbers came from (command, data, date).
    """

    weights: Mapping[str, float]
    bias: float
    threshold: float
    source: str = ""

    def probability(self, features: Mapping[str, float]) -> float:
        """P(answerable) for `features` (a missing feature counts as 0)."""
        z = self.bias + sum(w * float(features.get(name, 0.0)) for name, w in self.weights.items())
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@functools.cache
def load_calibration(path: Path = CALIBRATION_FILE) -> Calibration:
    """The fitted decision shipped with the package (or another file `bench/answerability.py`
    wrote).

    Raises:
        ValueError: The file is missing or not a calibration.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return Calibration(
            weights={str(k): float(v) for k, v in data["weights"].items()},
            bias=float(data["bias"]),
            threshold=float(data["threshold"]),
            source=str(data.get("source", "")),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not an answerability calibration ({exc})") from exc


def verify_log_odds(logprobs: Sequence[float], yes: int = len(YES_WORDS)) -> float:
    """log P(yes words) - log P(no words), from log-probabilities of the yes words then the no
    words (each side summed over its spellings)."""
    return _logsumexp(logprobs[:yes]) - _logsumexp(logprobs[yes:])


def features_of(prepared: Prepared, log_odds: float) -> dict[str, float]:
    """The decision's inputs: the verification's log-odds, the best retrieval score of the
    question's hits and the best score of its evidence items (sampler similarity, or the
    retrieval score without the sampler); 0 where there are none."""
    return {
        "verify_log_odds": round(float(log_odds), 4),
        "top_hit": round(max((float(h.score) for h in prepared.hits), default=0.0), 4),
        "top_item": round(max((float(i.score) for i in prepared.items), default=0.0), 4),
    }


def decide(
    features: Mapping[str, float],
    calibration: Calibration,
    threshold: float | None = None,
    *,
    draft: str = "",
) -> Answerability:
    """The decision for `features` (`threshold` None: the calibration's)."""
    cut = calibration.threshold if threshold is None else float(threshold)
    score = calibration.probability(features)
    log_odds = float(features.get("verify_log_odds", 0.0))
    return Answerability(
        score=round(score, 4),
        threshold=cut,
        answerable=score >= cut,
        verify_yes=round(1.0 / (1.0 + math.exp(-max(min(log_odds, 700.0), -700.0))), 4),
        features=dict(features),
        draft=draft,
    )


def check_answerability(
    prepared: Prepared,
    draft: str,
    generator: Generator,
    inputs: PromptInputs,
    *,
    cache: Any | None = None,
    calibration: Calibration | None = None,
) -> tuple[Answerability, StageStats]:
    """Ask the verification question after `draft` and decide.

    Args:
        prepared: The question (its prompt, hits and items).
        draft: The model's answer.
        generator: The generator that wrote it.
        inputs: The prompt's tokens as the draft's generation read them.
        cache: The torch KV cache that generation filled (None: the runtime's own prefix cache,
            or a fresh pass over prompt and follow-up).
        calibration: The decision (default: the shipped `answerability.json`).

    Returns:
        (the decision, the "answerability" stage: kept 1 of 1 item when answerable, the tokens
        the model ran of the verification sequence's tokens, its time).

    Raises:
        ValueError: `prepared` has no prompt.
        NotImplementedError: A runtime that cannot score next-token probabilities.
    """
    if prepared.prompt is None:
        raise ValueError("nothing to verify: the question found no evidence")
    started = time.perf_counter()
    calibration = calibration or load_calibration()
    suffix = generator.follow_up(prepared.prompt, draft, VERIFY_QUESTION)
    scores = generator.choice_logprobs(inputs, suffix, YES_WORDS + NO_WORDS, cache=cache)
    features = features_of(prepared, verify_log_odds(scores.logprobs))
    decision = decide(features, calibration, prepared.config.answerability_threshold, draft=draft)
    stage = StageStats(
        "answerability",
        int(decision.answerable),
        1,
        scores.fed_tokens,
        scores.total_tokens,
        (time.perf_counter() - started) * 1000,
    )
    logger.debug(
        "answerability %.3f (threshold %.3f) from %s", decision.score, decision.threshold, features
    )
    return decision, stage


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
