"""Computed answers: the model writes one arithmetic expression over numbers it quotes from the
evidence, `pipeline.answering.arithmetic` evaluates it, and the answer is the value, cited to
the evidence items that hold the operands.

The expression is refused, and the question answered the normal way, when the model wrote none,
the evaluator refuses it, or an operand is in neither the evidence nor the question (a number
the model made up); a handful of conventional constants (100 for a percentage, 1000, 12, ...)
need no source. The reason goes into `Computation.note` and the answer's stats.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence

from models.generator import Generation, Generator
from pipeline.answering.answer_types import AnswerType, format_number, parse_expression
from pipeline.answering.arithmetic import ArithmeticRefused, evaluate, numbers_in
from pipeline.answering.types import Computation, EvidenceItem, Prepared, StageStats

__all__ = ["COMPUTE_TOKENS", "compute_answer", "find_sources", "numbers_of"]

COMPUTE_TOKENS = 64  # an expression over a few quoted numbers fits easily
# Numbers an expression may use without quoting them: percentages, thousands, months, days.
_CONVENTIONAL = frozenset({0.0, 1.0, 2.0, 3.0, 4.0, 10.0, 12.0, 100.0, 365.0, 1000.0, 1e6, 1e9})
_NUMBER = re.compile(r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])\.\d+")


def numbers_of(text: str) -> list[float]:
    """The numbers written in `text` ("1,358" -> 1358.0, "(4.5)" -> 4.5), signs dropped."""
    return [float(m.group().replace(",", "")) for m in _NUMBER.finditer(text)]


def _same(value: float, written: float) -> bool:
    """`value` is the number `written` in a text, or that number as a fraction or a percentage
    (45% in the evidence, 0.45 in the expression)."""
    value = abs(value)
    return any(
        math.isclose(value, target, rel_tol=1e-9, abs_tol=1e-12)
        for target in (written, written / 100, written * 100)
    )


def find_sources(
    operands: Iterable[float], items: Sequence[EvidenceItem], question: str = ""
) -> tuple[list[int], list[float]]:
    """Which evidence items hold each operand.

    Returns:
        (the evidence numbers [n] holding an operand, best-ranked first, each once;
        the operands found nowhere: not in the evidence, not in the question and not a
        conventional constant).
    """
    # A number the question states may be an operand ("if it rose by 10 points"), a year not.
    in_question = [x for x in numbers_of(question) if not (x == int(x) and 1900 <= x <= 2100)]
    item_numbers = [numbers_of(item.text) for item in items]
    by_rank = sorted(range(len(items)), key=lambda i: items[i].rank)
    sources: list[int] = []
    missing: list[float] = []
    for value in operands:
        holder = next((i for i in by_rank if any(_same(value, x) for x in item_numbers[i])), None)
        if holder is not None:
            if holder + 1 not in sources:
                sources.append(holder + 1)
        elif abs(value) not in _CONVENTIONAL and not any(_same(value, x) for x in in_question):
            missing.append(value)
    return sources, missing


def compute_answer(
    prepared: Prepared, generator: Generator, answer_type: AnswerType
) -> tuple[Computation, Generation | None, StageStats]:
    """Ask the model for an expression (`prepared.compute_prompt`) and evaluate it.

    Returns:
        (the computation: `ok` with its value and answer text, else with the note saying why;
        the model's generation, None when it failed to run; the `compute` stage's stats: 1 of 1
        items kept when the value answers, the tokens generated of those allowed).
    """
    started = time.perf_counter()
    prompt = prepared.compute_prompt
    if prompt is None:
        raise ValueError("the question has no compute prompt (it needs no arithmetic)")
    # NOTE: the expression may follow a code fence's first line, so newlines do not stop it.
    generation = generator.generate(
        prompt, max_new_tokens=COMPUTE_TOKENS, stop_at_newline=False,
        stop_strings=("\n\n", "\nQuestion", "```\n"),
    )  # fmt: skip
    computation = _evaluate(generation.text, prepared, answer_type)
    stage = StageStats(
        "compute",
        int(computation.ok),
        1,
        generation.new_tokens,
        COMPUTE_TOKENS,
        (time.perf_counter() - started) * 1000,
    )
    return computation, generation, stage


def _evaluate(reply: str, prepared: Prepared, answer_type: AnswerType) -> Computation:
    """The computation a model's reply stands for (see the module docstring)."""
    expression = parse_expression(reply)
    if expression is None:
        return Computation("", note="the model wrote no expression")
    try:
        value = evaluate(expression)
        operands = numbers_in(expression)
    except ArithmeticRefused as exc:
        return Computation(expression, note=f"refused: {exc}")
    if len(operands) < 2:
        return Computation(expression, note="no arithmetic: a single number")
    sources, missing = find_sources(operands, prepared.items, prepared.question)
    if missing:
        shown = ", ".join(f"{m:g}" for m in missing[:3])
        return Computation(expression, note=f"operands not in the evidence: {shown}")
    if not sources:
        return Computation(expression, note="no operand comes from the evidence")
    text = format_number(value, answer_type, prepared.question)
    markers = ", ".join(str(n) for n in sources)
    answer = f"{text} [{markers}] (computed: {expression})"
    return Computation(expression, value=text, sources=tuple(sources), answer=answer)
