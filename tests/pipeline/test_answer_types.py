"""Typed answers: the answer type read from the question, the short answer cut from the model's
output, the expression read from its reply, and the operands found in the evidence."""

from __future__ import annotations

import pytest

from pipeline.answering.answer_types import (
    AnswerType,
    format_number,
    infer_type,
    needs_arithmetic,
    parse_expression,
    short_answer,
    type_instruction,
)
from pipeline.answering.compute import find_sources, numbers_of
from pipeline.answering.types import EvidenceItem

T = AnswerType


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How many datasets are used for experiments of this paper in all?", T.INTEGER),
        ("Which year was this document most likely published?", T.INTEGER),
        ("What is the CAGR of television from 2012 to 2016?", T.NUMBER),
        (
            "What is cash ratio in FY2021 for Nike? Round your answer to two decimal places.",
            T.NUMBER,
        ),
        ("How much did COSTCO spend on repurchasing of common stock in FY2021?", T.NUMBER),
        ("How many more debit card users in millions were there in 2015 than in 2014?", T.NUMBER),
        ("According to the presentation, what are three bad fonts?", T.LIST),
        ("List all pages on which the logo appears.", T.LIST),
        ("Which two tasks did the author mainly experiment on?", T.LIST),
        ("Is the logo the same before and after the first hour?", T.YES_NO),
        ("Is the logo blue or red?", T.STRING),
        ("Who is the defendant of this case?", T.STRING),
        ("What is the color of the loss curve?", T.STRING),
        ("Which paper uses the Fast NMS processing?", T.STRING),
        ("How does Best Buy record merchandise inventories?", T.FREE),
        ("Why did the committee meet twice?", T.FREE),
        ("How many signatures are there? Write the answer in the integer format.", T.INTEGER),
    ],
)
def test_the_answer_type_is_read_from_the_question(question: str, expected: AnswerType) -> None:
    assert infer_type(question) is expected


def test_each_type_maps_to_a_benchmark_format_and_an_instruction() -> None:
    assert [t.benchmark_format for t in T] == ["Int", "Float", "List", "Str", "Str", "Str"]
    assert type_instruction(T.INTEGER) == (
        'Answer with a single integer. If the evidence does not state it, reply "Not answerable".'
    )
    assert "square brackets" in type_instruction(T.LIST) and "[a, b]" not in type_instruction(T.LIST)
    assert all(type_instruction(t).endswith('reply "Not answerable".') for t in T)


@pytest.mark.parametrize(
    ("question", "computed"),
    [
        ("What is the CAGR of television from 2012 to 2016?", True),
        ("How many more debit card users in millions were there in 2015 than in 2014?", True),
        ("What is total debt to EBITDA ratio of COSTCO in FY2021?", True),
        ("What is the average number of words per user?", True),
        ("Assume the share rose by 10 points; what would the difference be?", True),
        ("How many datasets are used for experiments of this paper?", False),
        ("What is total liabilities for costco in FY 2021?", False),
        ("Which group grew the most?", False),  # a string answer is never computed
    ],
)
def test_arithmetic_questions_are_flagged(question: str, computed: bool) -> None:
    assert needs_arithmetic(question) is computed


@pytest.mark.parametrize(
    ("text", "kind", "question", "short"),
    [
        ("The answer is $1,874 million [3].", T.NUMBER, "", "1874"),
        ("20.7 %", T.NUMBER, "", "20.7%"),
        ("−3.5", T.NUMBER, "", "-3.5"),
        ("In 2021, Costco operated 815 warehouses.", T.INTEGER, "How many at 2021?", "815"),
        ("three [2]", T.INTEGER, "", "3"),
        ("no number here", T.INTEGER, "", "no number here"),
        ('["a", "b"]', T.LIST, "", "['a', 'b']"),
        (
            "Times New Roman, Arial and Comic Sans.",
            T.LIST,
            "",
            "['Times New Roman', 'Arial', 'Comic Sans']",
        ),
        ("$35,000; $40,684", T.LIST, "", "['$35,000', '$40,684']"),
        ("Yes, it is the same [4].", T.YES_NO, "", "Yes"),
        ("no.", T.YES_NO, "", "No"),
        ("Pier 45.", T.STRING, "", "Pier 45"),
        ("It is blue", T.STRING, "", "blue"),
        ("Not answerable", T.NUMBER, "", "Not answerable"),
        (
            "They record it at the lower of cost or value [1].",
            T.FREE,
            "",
            "They record it at the lower of cost or value.",
        ),
        ("", T.STRING, "", ""),
    ],
)
def test_the_short_answer_keeps_the_type(
    text: str, kind: AnswerType, question: str, short: str
) -> None:
    assert short_answer(text, kind, question) == short


@pytest.mark.parametrize(
    ("value", "kind", "question", "text"),
    [
        (14.692982, T.NUMBER, "", "14.69"),
        (0.0123456, T.NUMBER, "", "0.01235"),
        (8802.0, T.NUMBER, "", "8802"),
        (1.02345, T.NUMBER, "Round your answer to three decimal places.", "1.023"),
        (2.0, T.NUMBER, "round to two decimal places", "2.00"),
        (12.0000000001, T.INTEGER, "", "12"),
        (-4.5, T.NUMBER, "", "-4.5"),
    ],
)
def test_computed_values_are_written_as_asked(
    value: float, kind: AnswerType, question: str, text: str
) -> None:
    assert format_number(value, kind, question) == text


@pytest.mark.parametrize(
    ("reply", "expression"),
    [
        ("Expression: (52.3 - 45.6) / 45.6 * 100", "(52.3 - 45.6) / 45.6 * 100"),
        ("```python\n(1,358 - 1,209) / 1,209\n```", "(1358 - 1209) / 1209"),
        ("growth = (10 - 8) / 8 = 0.25", "(10 - 8) / 8"),
        ("Expression: 45% - 30%", "45 - 30"),
        ("Expression: round(2 / 3, 2) [3]", "round(2 / 3, 2)"),
        ("Expression: max(1,200)", "max(1,200)"),  # a call's commas stay commas
        ("The answer is 42", None),
        ("", None),
    ],
)
def test_the_expression_is_read_from_the_reply(reply: str, expression: str | None) -> None:
    assert parse_expression(reply) == expression


def _item(text: str, rank: int) -> EvidenceItem:
    return EvidenceItem(
        doc_id="d", page=rank + 1, kind="text", blocks=(), text=text, score=0.0, rank=rank
    )


def test_operands_are_found_in_the_evidence_best_ranked_first() -> None:
    items = [
        _item("Revenue was 1,358 million in 2021.", 1),
        _item("Revenue was 1,358 million; costs were 1,209 million.", 0),
        _item("The share of online sales reached 45%.", 2),
    ]
    assert numbers_of("1,358 and (4.5) and .5") == [1358.0, 4.5, 0.5]
    sources, missing = find_sources([1358.0, 1209.0, 100.0], items, "What is the change?")
    assert sources == [2] and missing == []
    sources, missing = find_sources([0.45, 7.0], items, "")
    assert sources == [3] and missing == [7.0]
    # A number the question states (not a year) may be an operand; 100 never needs a source.
    _, missing = find_sources([10.0, 100.0], items, "If it rose by 10 points?")
    assert missing == []
    # ...but not a year: "2018 / 2014" is not a multiple of sales.
    _, missing = find_sources([2018.0, 2014.0], items, "What multiple of 2014 sales in 2018?")
    assert missing == [2018.0, 2014.0]
