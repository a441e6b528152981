"""Typed answers: the answer type a question expects, the prompt line that asks for it, and the
model's output cut to a short answer of that type.

`infer_type` reads the question with a few transparent rules, first match wins (tuned on the
train documents of the dev split, `python -m pipeline.research.answer_types` reports them per
answer format):

1. list: "list", "enumerate", "what are the ...", "which two/three ...";
2. integer or number when the question says the format ("int format", "round to 2 decimal
   places", "float format");
3. yes/no: a question opening with an auxiliary verb ("Is ...", "Does ...") and offering no
   alternatives ("A or B");
4. integer: "how many", "which year", "which page";
5. number: a quantity is asked for ("percentage", "ratio", "how much", "average", "total",
   financial statement terms, ...) by a "what"/"how much" question;
6. free text: "how does", "why", "describe", "explain", "repeat", "tell me";
7. string: everything else.

`needs_arithmetic` flags numeric questions whose answer is usually computed from stated numbers
(differences, ratios, growth, sums, averages); the answering flow then asks the model for an
arithmetic expression (`pipeline.answering.arithmetic`).

`short_answer` turns the model's output into the short answer of its type: the number without
units or thousands separators (a percent sign kept), a list as `['a', 'b']`, Yes or No, the
phrase without citation markers. "Not answerable" stays as is.
"""

from __future__ import annotations

import ast
import math
import re
from enum import StrEnum

__all__ = [
    "COMPUTE_INSTRUCTION",
    "WORD_NUMBERS",
    "AnswerType",
    "format_number",
    "infer_type",
    "needs_arithmetic",
    "parse_expression",
    "short_answer",
    "type_instruction",
]


class AnswerType(StrEnum):
    """What kind of answer a question expects."""

    INTEGER = "integer"
    NUMBER = "number"  # a float, an amount with a unit, a percentage
    LIST = "list"
    YES_NO = "yes/no"
    STRING = "string"  # a short phrase: a name, a title, a date, a value as written
    FREE = "free text"  # a sentence or more

    @property
    def benchmark_format(self) -> str:
        """The MMLongBench `answer_format` this type stands for (Int, Float, List or Str)."""
        return {"integer": "Int", "number": "Float", "list": "List"}.get(self.value, "Str")


# NOTE: each names "Not answerable" again: after "Answer with a single integer." alone the 0.5B
# gave a number where the evidence had none (on the whole dev split it declined half as often as
# without the instruction); "[a, b]" as the list example was copied verbatim.
_NOT_STATED = ' If the evidence does not state it, reply "Not answerable".'
_INSTRUCTIONS = {
    AnswerType.INTEGER: "Answer with a single integer." + _NOT_STATED,
    AnswerType.NUMBER: "Answer with a single number (add % for a percentage)." + _NOT_STATED,
    AnswerType.LIST: "Answer with the items in square brackets, separated by commas." + _NOT_STATED,
    AnswerType.YES_NO: "Answer Yes or No." + _NOT_STATED,
    AnswerType.STRING: "Answer with a short phrase from the evidence." + _NOT_STATED,
    AnswerType.FREE: "Answer in one short sentence." + _NOT_STATED,
}

COMPUTE_INSTRUCTION = (
    "Compute the answer: write one Python arithmetic expression using the numbers from the "
    "evidence (no variable names). Reply as: Expression: <arithmetic>"
)

_NUMBER_WORDS = (
    "two|three|four|five|six|seven|eight|nine|ten"  # "which three tabs", "what two tasks"
)
_LIST = re.compile(
    r"\blist\b|\benumerate\b|\bitemi[sz]e\b|\b(what|which) (are|were)\b|"
    rf"\b(what|which|name) ({_NUMBER_WORDS})\b(?! (times|percent|years?|days?)\b)",
)
_SAYS_INTEGER = re.compile(r"\bint(eger)? format\b|\b(an|one|single) integer\b|\binteger\b")
_SAYS_NUMBER = re.compile(
    r"\bfloat format\b|\bdecimal (places?|points?)\b|\bround (it|your answer|the answer|to)\b"
)
_AUXILIARY = re.compile(
    r"^\s*(is|are|was|were|does|do|did|can|could|has|have|had|will|would|should|shall|may)\b"
)
_ALTERNATIVES = re.compile(r"\bor\b")
_COUNT = re.compile(
    r"\bhow many\b|\b(which|what) year\b|\b(which|what) page\b|\bpage number\b|"
    r"\bin which year\b"
)
_NUMBER_UNITS = re.compile(r"\b(millions?|billions?|thousands?|percent(age)?|%)")
_QUANTITY = re.compile(
    r"%|\bpercent|ratio\b|\brate\b|\bproportion\b|\bhow much\b|\baverage\b|\bmean\b|"
    r"\bmedian\b|\bcagr\b|\bgrowth\b|\bmultiple of\b|\bin (millions?|billions?|thousands?)\b|"
    r"\bsum\b|\btotal\b|\bdifference\b|\bchange\b|\bincrease|\bdecrease|\bturnover\b|"
    r"\bmargin\b|\breturn on\b|\bcash\b|\bdebt\b|\bliabilit|\bassets?\b|\bequity\b|\bebitda\b|"
    r"\brevenues?\b|\bincome\b|\bearnings\b|\bdividends?\b|\bcapital\b|\bexpenses?\b|"
    r"\bprofits?\b|\bgoodwill\b|\bsales\b|\bcosts?\b|\bprice\b|\bvalue of\b|\bamount\b|\bscore\b|"
    r"\baccuracy\b|\bperformance\b|\bvoltage\b|\bhit rate\b|\bcycle\b|\bcoverage\b"
)
_ASKS_QUANTITY = re.compile(r"\b(what|what's|whats|how much|how)\b")
_NAMED_THING = re.compile(
    r"^\s*(which|who|whom|whose|where|when|name)\b|\bwhat (is|was) the name\b|"
    r"\b(which|what) (company|method|dataset|paper|model|group|category|channel)\b|"
    r"\bcolou?rs?\b|\bduration\b|\bdate\b|\btitle\b"
)
_FREE = re.compile(
    r"^\s*(how (does|do|did|is|are|can|could|should|would)|why|describe|explain|summari[sz]e|"
    r"repeat|tell me|what (does|do|did) .* (mean|do|rely|say|suggest|recommend))\b"
)

_ARITHMETIC = re.compile(
    r"\bdifference\b|\bhow (many|much) (more|less|fewer|higher|lower|greater|larger|smaller)\b|"
    r"\b(increase|decrease|drop|rise|grow|change)[ds]?\b.*\bfrom\b|\bgrowth\b|\bcagr\b|"
    r"\bchange\b|ratio\b|\bturnover\b|\bsum\b|\bin total\b|\baverage\b|\bmultiple of\b|"
    r"\bassume\b|\b(absolute|percentage) (drop|increase|decrease|change)\b|\bto current \w+|"
    r"\bcompared (to|with)\b|\bper (user|person|capita|share|employee|store)\b|"
    r"\bconversion cycle\b|\breturn on\b|\bcoverage\b|\b\w+ to (total |average )?\w+\b(?=.*ratio)|"
    r"\bto (total|average) \w+|\bproportion\b|\bhow many times\b|\btimes (more|less|larger)\b"
)


def infer_type(question: str) -> AnswerType:
    """The answer type `question` expects (see the module docstring for the rules)."""
    q = re.sub(r"\s+", " ", question.strip().lower())
    if _LIST.search(q):
        return AnswerType.LIST
    if _SAYS_INTEGER.search(q):
        return AnswerType.INTEGER
    if _SAYS_NUMBER.search(q):
        return AnswerType.NUMBER
    if _AUXILIARY.search(q) and not _ALTERNATIVES.search(q):
        return AnswerType.YES_NO
    if _COUNT.search(q):
        if re.search(r"\bhow many (more|less|fewer)\b", q) and _NUMBER_UNITS.search(q):
            return AnswerType.NUMBER  # a difference of amounts ("in millions") need not be whole
        return AnswerType.INTEGER
    if _FREE.search(q):
        return AnswerType.FREE
    if _QUANTITY.search(q) and _ASKS_QUANTITY.search(q) and not _NAMED_THING.search(q):
        return AnswerType.NUMBER
    return AnswerType.STRING


def needs_arithmetic(question: str, answer_type: AnswerType | None = None) -> bool:
    """Whether the numeric answer to `question` is usually computed from stated numbers
    (a difference, ratio, growth rate, sum, average), not read off the page."""
    kind = infer_type(question) if answer_type is None else answer_type
    if kind not in (AnswerType.INTEGER, AnswerType.NUMBER):
        return False
    q = re.sub(r"\s+", " ", question.strip().lower())
    return _ARITHMETIC.search(q) is not None


def type_instruction(answer_type: AnswerType) -> str:
    """The line that asks the model for an answer of this type."""
    return _INSTRUCTIONS[answer_type]


# ------------------------------------------------------------------------ the short answer

_MARKERS = re.compile(r"\s*\[\d+(?:\s*[,;-]\s*\d+)*\]")
_NUMBER = re.compile(
    r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?%)?|(?<![\w.])[-+]?\.\d+(?:\s?%)?"
)
# Number words read as numbers (short answers here, predictions in `evaluation.scoring`).
WORD_NUMBERS = {
    "zero": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20,
}  # fmt: skip
_LEAD_IN = re.compile(
    r"^(the )?(final |short )?answer( is)?\s*[:=]?\s*|^(it|this|that) (is|was|are)\s+", re.I
)
_DECLINED = "Not answerable"


def short_answer(text: str, answer_type: AnswerType, question: str = "") -> str:
    """The model's answer `text` as a short answer of `answer_type`.

    Numbers lose units, currency and thousands separators and keep a percent sign
    ("$1,874 million" -> "1874", "20.7 %" -> "20.7%"); where the text holds several, the first
    one that the question does not already state is taken ("In 2021 it ran 815" -> "815" for a
    question about 2021). Lists become `['a', 'b']`; yes/no answers "Yes" or "No"; strings lose
    citation markers, a lead-in ("The answer is") and end punctuation. A text without the
    expected shape (no number for a number) comes back cleaned but otherwise as written.
    """
    plain = re.sub(r"\s+", " ", _MARKERS.sub("", text)).strip()
    if not plain:
        return ""
    if plain.lower().rstrip(".") == _DECLINED.lower():
        return _DECLINED
    cleaned = _LEAD_IN.sub("", plain).strip().strip("`").strip()
    if answer_type in (AnswerType.INTEGER, AnswerType.NUMBER):
        number = _pick_number(cleaned, question)
        return number if number is not None else _strip_phrase(cleaned)
    if answer_type is AnswerType.LIST:
        items = _list_items(cleaned)
        return repr(items) if items else _strip_phrase(cleaned)
    if answer_type is AnswerType.YES_NO:
        word = re.match(r"\W*(yes|no)\b", cleaned, re.I)
        return word.group(1).capitalize() if word else _strip_phrase(cleaned)
    if answer_type is AnswerType.STRING:
        return _strip_phrase(cleaned)
    return cleaned


def format_number(value: float, answer_type: AnswerType, question: str = "") -> str:
    """A computed value as a short answer: whole numbers without a decimal point, else rounded
    as the question asks ("round to 3 decimal places") or to 4 significant digits."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    places = re.search(r"(\d+|one|two|three|four) decimal", question.lower())
    if places:
        digits = places.group(1)
        n = int(digits) if digits.isdigit() else WORD_NUMBERS[digits]
        return f"{value:.{n}f}"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if answer_type is AnswerType.INTEGER and abs(value - round(value)) < 1e-6:
        return str(round(value))
    magnitude = math.floor(math.log10(abs(value))) if value else 0
    decimals = max(0, 3 - magnitude)  # 4 significant digits
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def parse_expression(text: str) -> str | None:
    """The arithmetic expression in a model's reply ("Expression: (a - b) / b * 100"), or None.

    Takes what follows the last "Expression:" (else the first line that holds a digit and an
    operator), without code fences, an `= result` the model added, a trailing `%` or thousands
    separators in plain numbers (`1,358` -> `1358`, only where the expression calls nothing).
    """
    body = text.replace("```python", "\n").replace("```", "\n")
    found = list(re.finditer(r"expression\s*[:=]\s*", body, re.I))
    if found:
        candidate = body[found[-1].end() :].strip().splitlines()
        line = candidate[0] if candidate else ""
    else:
        line = next(
            (
                ln
                for ln in body.splitlines()
                if re.search(r"\d", ln) and re.search(r"\d\s*[-+*/]\s*[\d(]", ln)
            ),
            "",
        )
    line = _MARKERS.sub("", line).strip().strip("`").strip()
    line = re.sub(r"^[A-Za-z_ ]+=\s*", "", line)  # "growth = (a - b) / b"
    line = line.split("=")[0].strip().rstrip(".;,").replace("−", "-").replace("×", "*")
    line = re.sub(r"(?<=\d)\s*%", "", line)
    if not re.search(r"[A-Za-z_]\s*\(", line):
        line = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", line)
    return line or None


def _pick_number(text: str, question: str) -> str | None:
    """The answer's number as a short answer (see `short_answer`)."""
    found = [m.group() for m in _NUMBER.finditer(text)]
    if not found:
        words = [WORD_NUMBERS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in WORD_NUMBERS]
        return str(words[0]) if words else None
    stated = {_plain_number(m.group()) for m in _NUMBER.finditer(question)}
    fresh = [n for n in found if _plain_number(n) not in stated]
    return _plain_number((fresh or found)[0])


def _plain_number(text: str) -> str:
    """`"1,874"` -> `"1874"`, `"20.7 %"` -> `"20.7%"`, `"−3"` -> `"-3"`, `"+4"` -> `"4"`."""
    out = text.replace(",", "").replace(" ", "").replace("−", "-").lstrip("+")
    return out


def _list_items(text: str) -> list[str]:
    """Items of a list answer: a Python-style literal, else split at commas, semicolons and a
    final "and"."""
    stripped = text.strip().rstrip(".")
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            value = ast.literal_eval(stripped)
            if isinstance(value, list | tuple):
                return [str(v).strip() for v in value if str(v).strip()]
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
        stripped = stripped[1:-1]
    # "1,358" stays one item; "A, B and C" is three.
    parts = re.split(r"\s*;\s*|\s*,(?!\d{3}\b)\s*|\s+and\s+(?=[^,]*$)", stripped)
    return [p.strip().strip("'\"").strip() for p in parts if p.strip().strip("'\"").strip()]


def _strip_phrase(text: str) -> str:
    return text.strip().strip("'\"").strip().rstrip(".!;:,").strip()
