"""Rule-based answer scoring for MMLongBench-style questions, by answer format.

Formats (the benchmark's `answer_format`):
- `Int`: the first number of the prediction equals the gold integer ("3 charts" scores 1 for 3).
- `Float`: within 1% (relative) of the gold value, also read as a percentage (21% = 0.21 = 21).
- `Str`: the normalised gold is contained in the normalised prediction (which may not be more
  than a few times longer), else ANLS (1 - normalised Levenshtein distance, 0 below 0.5).
- `List`: set F1 between gold items and predicted items (split at commas and semicolons, and
  at "and" where that scores better);
  two items match when they score 1 as numbers or as strings.
- `None`: the gold is "Not answerable"; the prediction scores 1 when it declines.

Normalisation: lower case, quotes, parentheses, currency and percent signs, thousands separators,
trailing punctuation, a few units (miles, million, percent). Headline numbers follow the
benchmark's own scorer: accuracy is the mean score; F1 is the harmonic mean of recall (mean score
over answerable questions) and precision (their total score over the questions the system
answered); "Not answerable" precision and recall count declines.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pipeline.answering.answer_types import WORD_NUMBERS

logger = logging.getLogger(__name__)

__all__ = [
    "NOT_ANSWERABLE",
    "AnswerFormat",
    "QAScores",
    "ScoredAnswer",
    "aggregate",
    "is_not_answerable",
    "normalize_text",
    "parse_number",
    "score_answer",
]

NOT_ANSWERABLE = "Not answerable"

_NA_PATTERNS = re.compile(
    r"\b(not answerable|unanswerable|cannot be (answered|determined|found)|"
    r"can ?not (answer|determine|be found)|can't (answer|determine|be (answered|determined))|"
    r"(is|are) not (mentioned|provided|specified|stated|given|available|included)|"
    r"no (information|answer|evidence|data)( is)? (available|provided|given|found|about|on)|"
    r"(does|do) not (contain|provide|mention|specify|say|include)|"
    r"doesn't (contain|provide|mention|specify|say|include)|not enough information|"
    r"insufficient (information|evidence)|unknown|n/a)\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_UNITS = re.compile(r"\s*\b(miles?|millions?|billions?|percent|per cent|pp|points?)\s*$")
_PARENS = re.compile(r"\s*\([^)]*\)")
_SPLIT_ITEMS = re.compile(r"\s*(?:;|\n|,)\s*")
_SPLIT_AND = re.compile(r"\s*(?:\band\b|&)\s*")
_CITATION = re.compile(r"\s*\[\d+(?:\s*[,;-]\s*\d+)*\]")
_STR_CONTAIN_RATIO = 4.0


class AnswerFormat(StrEnum):
    """The benchmark's answer formats."""

    STR = "Str"
    INT = "Int"
    FLOAT = "Float"
    LIST = "List"
    NONE = "None"


def is_not_answerable(text: str) -> bool:
    """Whether a prediction declines to answer (empty, "Not answerable", "not mentioned", ...)."""
    stripped = text.strip().strip(".").strip()
    return not stripped or bool(_NA_PATTERNS.search(stripped))


def normalize_text(text: str) -> str:
    """Lower case; drop citations `[n]`, parentheses, quotes, `$`, `%`, units and end punctuation."""
    s = _CITATION.sub("", str(text)).lower().strip()
    s = _PARENS.sub("", s)
    s = s.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    previous = None
    while s != previous:
        previous = s
        s = s.strip().strip("'\"`").strip().rstrip(".!;:,").strip()
    s = s.lstrip("$€£").strip()
    s = s.rstrip("%").strip()
    s = _UNITS.sub("", s).strip()
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    return re.sub(r"\s+", " ", s)


def parse_number(text: str) -> float | None:
    """The first number in `text` ("12,400 people" -> 12400.0; "three" -> 3.0), else None."""
    cleaned = _CITATION.sub("", str(text))
    match = _NUMBER.search(cleaned)
    if match:
        try:
            return float(match.group().replace(",", ""))
        except ValueError:  # pragma: no cover - the pattern only matches numbers
            return None
    for word in re.findall(r"[a-z]+", cleaned.lower()):
        if word in WORD_NUMBERS:
            return float(WORD_NUMBERS[word])
    return None


def score_answer(prediction: str, gold: str, answer_format: str | AnswerFormat) -> float:
    """Score one prediction against the gold answer, in [0, 1].

    Args:
        prediction: The system's answer text (citation markers are ignored).
        gold: The reference answer ("Not answerable" for unanswerable questions).
        answer_format: Str, Int, Float, List or None.

    Returns:
        1.0 for a match, 0.0 for none, in between for partial Str (ANLS) and List (F1) matches.

    Raises:
        ValueError: An unknown answer format.
    """
    fmt = AnswerFormat(answer_format)
    declined = is_not_answerable(prediction)
    if fmt is AnswerFormat.NONE or normalize_text(gold) == NOT_ANSWERABLE.lower():
        return 1.0 if declined else 0.0
    if declined:
        return 0.0
    if fmt is AnswerFormat.INT:
        return 1.0 if _int_equal(prediction, gold) else 0.0
    if fmt is AnswerFormat.FLOAT:
        return 1.0 if _float_equal(prediction, gold) else 0.0
    if fmt is AnswerFormat.LIST:
        return _list_f1(prediction, gold)
    return _str_score(prediction, gold)


def _int_equal(prediction: str, gold: str) -> bool:
    want, got = parse_number(gold), parse_number(prediction)
    return want is not None and got is not None and round(got) == round(want) and got == int(got)


def _float_equal(prediction: str, gold: str) -> bool:
    want, got = parse_number(gold), parse_number(prediction)
    if want is None or got is None:
        return False
    for target in (want, want / 100, want * 100):
        if math.isclose(got, target, rel_tol=0.01, abs_tol=1e-9):
            return True
        # "18.3" for "18.29": equal at the (one or two decimal) precision the prediction gives
        places = len(repr(got).split(".")[-1]) if got != int(got) else 0
        if 1 <= places <= 2 and round(target, places) == got:
            return True
    return False


def _str_score(prediction: str, gold: str) -> float:
    pred, want = normalize_text(prediction), normalize_text(gold)
    if not pred or not want:
        return 0.0
    if want in pred and len(pred) <= _STR_CONTAIN_RATIO * len(want) + 20:
        return 1.0
    if _is_exact_kind(want):
        return 1.0 if pred == want else 0.0
    return _anls(want, pred)


def _is_exact_kind(text: str) -> bool:
    """Answers that only match exactly: URLs, file names, numbers, dates, e-mail addresses."""
    return bool(
        "://" in text
        or re.fullmatch(r"[\w.-]+\.(py|ipynb|pdf|json)", text)
        or re.fullmatch(r"\d+([-\s]\d+)*", text)
        or re.fullmatch(r"[\w.%+-]+@[\w.-]+\.[a-z]{2,}", text)
    )


def _anls(gold: str, prediction: str, threshold: float = 0.5) -> float:
    length = max(len(gold), len(prediction))
    if not length:
        return 0.0
    similarity = 1.0 - _levenshtein(gold, prediction) / length
    return similarity if similarity >= threshold else 0.0


def _levenshtein(a: str, b: str) -> int:
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, start=1):
        current = [j]
        for i, ca in enumerate(a, start=1):
            current.append(min(previous[i] + 1, current[i - 1] + 1, previous[i - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _list_items(text: str, *, split_and: bool = False) -> list[str]:
    """Items of a list answer: a Python-style list literal, or text split at `,`, `;`, newlines
    (and, with `split_and`, at "and" and "&" too)."""
    stripped = _CITATION.sub("", text).strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            value = ast.literal_eval(stripped)
            if isinstance(value, list | tuple):
                return [str(v) for v in value if str(v).strip()]
        except (ValueError, SyntaxError):
            stripped = stripped[1:-1]
    parts = _SPLIT_ITEMS.split(stripped)
    if split_and:
        parts = [piece for part in parts for piece in _SPLIT_AND.split(part)]
    return [p.strip().strip("'\"").strip() for p in parts if p.strip().strip("'\"").strip()]


def _item_match(prediction: str, gold: str) -> bool:
    want, got = parse_number(gold), parse_number(prediction)
    numeric = re.fullmatch(r"[-+$€£]?[\d.,]+%?", normalize_text(gold) or "x") is not None
    if numeric and want is not None:
        return got is not None and _float_equal(prediction, gold)
    return (
        _str_score(prediction, gold) >= 0.999
        or _anls(normalize_text(gold), normalize_text(prediction)) >= 0.8
    )


def _list_f1(prediction: str, gold: str) -> float:
    """Set F1; "and" splits the prediction only where that scores better ("A, B and C" is three
    items, "black and white" may be one)."""
    golds = _list_items(gold)
    return max(_set_f1(_list_items(prediction, split_and=split), golds) for split in (False, True))


def _set_f1(preds: list[str], golds: list[str]) -> float:
    if not golds or not preds:
        return 0.0
    unmatched = list(range(len(golds)))
    hits = 0
    for item in preds:
        for j in unmatched:
            if _item_match(item, golds[j]):
                unmatched.remove(j)
                hits += 1
                break
    if not hits:
        return 0.0
    precision, recall = hits / len(preds), hits / len(golds)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class ScoredAnswer:
    """One scored prediction."""

    prediction: str
    gold: str
    answer_format: str
    score: float

    @property
    def gold_declines(self) -> bool:
        return (
            self.answer_format == AnswerFormat.NONE or normalize_text(self.gold) == "not answerable"
        )

    @property
    def declined(self) -> bool:
        return is_not_answerable(self.prediction)


@dataclass(frozen=True)
class QAScores:
    """Headline numbers over a set of scored answers."""

    questions: int
    accuracy: float
    f1: float
    na_precision: float
    na_recall: float


def aggregate(scored: Sequence[ScoredAnswer]) -> QAScores:
    """Accuracy, MMLongBench F1, and "Not answerable" precision/recall.

    F1: recall = total score on answerable questions / their number; precision = the same total /
    the number of questions the system answered (did not decline). Precision and recall of
    "Not answerable" are 0 when undefined (no declines, or no unanswerable questions).
    """
    n = len(scored)
    if not n:
        return QAScores(0, 0.0, 0.0, 0.0, 0.0)
    accuracy = sum(s.score for s in scored) / n
    answerable = [s for s in scored if not s.gold_declines]
    answered = [s for s in scored if not s.declined]
    total = sum(s.score for s in answerable)
    recall = total / len(answerable) if answerable else 0.0
    precision = total / len(answered) if answered else 0.0
    f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    declined = [s for s in scored if s.declined]
    gold_na = [s for s in scored if s.gold_declines]
    both = sum(s.gold_declines for s in declined)
    return QAScores(
        questions=n,
        accuracy=accuracy,
        f1=f1,
        na_precision=both / len(declined) if declined else 0.0,
        na_recall=both / len(gold_na) if gold_na else 0.0,
    )
