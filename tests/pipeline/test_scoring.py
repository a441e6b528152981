"""Rule-based answer scoring by format, and the aggregate numbers (MMLongBench definitions)."""

from __future__ import annotations

import pytest

from pipeline.evaluation.scoring import (
    ScoredAnswer,
    aggregate,
    is_not_answerable,
    normalize_text,
    parse_number,
    score_answer,
)


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("3", "3", 1.0),
        ("3 charts", "3", 1.0),
        ("There are three charts.", "3", 1.0),
        ("12,400", "12400", 1.0),
        ("4", "3", 0.0),
        ("3.5", "3", 0.0),
        ("", "3", 0.0),
        ("3 [2]", "3", 1.0),  # a citation marker is not the answer
        ("[2] 7", "3", 0.0),
    ],
)
def test_int(prediction: str, gold: str, expected: float) -> None:
    assert score_answer(prediction, gold, "Int") == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("18.29%", "18.29%", 1.0),
        ("18.29", "18.29%", 1.0),
        ("0.1829", "18.29%", 1.0),  # a percentage given as a fraction
        ("18.3%", "18.29%", 1.0),  # rounded to the precision given
        ("18%", "18.29%", 0.0),
        ("21%", "21", 1.0),
        ("$4.2 billion", "4.2", 1.0),
        ("4.25", "4.2", 0.0),
        ("2.5 miles", "2.5", 1.0),
        ("about 100.5", "100", 1.0),  # within 1%
        ("Not answerable", "0.5", 0.0),
    ],
)
def test_float(prediction: str, gold: str, expected: float) -> None:
    assert score_answer(prediction, gold, "Float") == expected


def test_str_is_fuzzy_containment_then_anls() -> None:
    gold = "Berlin School of Experimental Psychology"
    assert score_answer("The Berlin School of Experimental Psychology.", gold, "Str") == 1.0
    assert score_answer('"berlin school of experimental psychology"', gold, "Str") == 1.0
    assert score_answer("Berlin Schol of Experimental Psychology", gold, "Str") == pytest.approx(
        1 - 1 / len(gold.lower())
    )
    assert score_answer("Vienna", gold, "Str") == 0.0
    # Containment does not reward dumping a whole paragraph.
    assert score_answer("Europe " + "and many other places " * 10, "Europe", "Str") == 0.0
    assert score_answer("Europe", "Europe", "Str") == 1.0
    assert score_answer("eating out (restaurants)", "Eating out", "Str") == 1.0


def test_str_exact_kinds_need_exact_matches() -> None:
    assert score_answer("https://example.org/a", "https://example.org/a", "Str") == 1.0
    assert score_answer("https://example.org/b", "https://example.org/a", "Str") == 0.0
    assert score_answer("2019", "2018", "Str") == 0.0
    assert score_answer("train.py", "train.py", "Str") == 1.0


def test_list_is_set_f1() -> None:
    gold = "['Europe', 'Asia', 'Africa']"
    assert score_answer("Asia, Europe and Africa", gold, "List") == 1.0
    assert score_answer("Asia, Europe", gold, "List") == pytest.approx(0.8)
    assert score_answer("Asia, Mars", gold, "List") == pytest.approx(0.4)
    assert score_answer("['Africa', 'Asia', 'Europe']", gold, "List") == 1.0
    assert score_answer("Mars", gold, "List") == 0.0
    assert score_answer("12%; 30%", "['30%', '12%']", "List") == 1.0
    assert score_answer("12.5, 30", "['30%', '12%']", "List") == pytest.approx(0.5)
    # "and" inside an item: "black and white" is one colour here, two items are not merged.
    two = "['yellow', 'black and white']"
    assert score_answer("black and white", two, "List") == pytest.approx(2 / 3)
    assert score_answer("yellow, black and white", two, "List") == 1.0


def test_not_answerable() -> None:
    assert score_answer("Not answerable", "Not answerable", "None") == 1.0
    assert score_answer("The document does not mention it.", "Not answerable", "None") == 1.0
    assert score_answer("", "Not answerable", "None") == 1.0
    assert score_answer("42", "Not answerable", "None") == 0.0
    assert score_answer("Not answerable", "42", "Int") == 0.0
    for text in ("not answerable.", "Unanswerable", "This cannot be determined from the evidence"):
        assert is_not_answerable(text)
    for text in ("42", "Berlin", "no leans who are male"):
        assert not is_not_answerable(text)


def test_normalisation_and_numbers() -> None:
    assert normalize_text(' "$1,200 (approx.)". ') == "1200"
    assert normalize_text("45 %") == "45"
    assert normalize_text("Answer [3]") == "answer"
    assert parse_number("about 12,400 people") == 12400.0
    assert parse_number("-0.5") == -0.5
    assert parse_number("seven") == 7.0
    assert parse_number("none given") == 0.0
    assert parse_number("no digits") is None


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        score_answer("1", "1", "Bool")


def test_aggregate_follows_the_benchmark() -> None:
    rows = [
        ScoredAnswer("3", "3", "Int", 1.0),  # answerable, right
        ScoredAnswer("4", "5", "Int", 0.0),  # answerable, wrong
        ScoredAnswer("Not answerable", "7", "Int", 0.0),  # answerable, declined
        ScoredAnswer("Not answerable", "Not answerable", "None", 1.0),  # right decline
        ScoredAnswer("9", "Not answerable", "None", 0.0),  # should have declined
    ]
    scores = aggregate(rows)
    assert scores.questions == 5
    assert scores.accuracy == pytest.approx(2 / 5)
    recall, precision = 1 / 3, 1 / 3  # 1 right of 3 answerable; 1 right of 3 answered
    assert scores.f1 == pytest.approx(2 * recall * precision / (recall + precision))
    assert scores.na_precision == pytest.approx(1 / 2)
    assert scores.na_recall == pytest.approx(1 / 2)
    empty = aggregate([])
    assert (empty.questions, empty.accuracy, empty.f1) == (0, 0.0, 0.0)
