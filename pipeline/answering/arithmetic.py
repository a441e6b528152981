"""A safe evaluator for one Python arithmetic expression, such as the model writes for a computed
answer: `(1358 - 1209) / 1209 * 100`.

The text is parsed with `ast` and walked over a whitelist: numeric constants, the binary
operators + - * / // % **, unary + and -, parentheses, and calls of `round`, `abs`, `min`, `max`
and `sum` over such expressions (a list or tuple only as `sum`'s, `min`'s or `max`'s single
argument). Anything else (names, attributes, subscripts, strings, lambdas, comprehensions,
comparisons, keywords) is refused, as are texts over `MAX_CHARS`, trees over `MAX_NODES` or
deeper than `MAX_DEPTH`, exponents over `MAX_EXPONENT` and results over `MAX_MAGNITUDE`. Nothing
here calls `eval`, `exec` or `compile`: the walk computes the value itself, each step checked.

    >>> evaluate("(52.3 - 45.6) / 45.6 * 100")
    14.692982456140353
    >>> evaluate("__import__('os')")
    Traceback (most recent call last):
    ArithmeticRefused: not arithmetic: a call of something other than round, abs, min, max, sum
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

__all__ = [
    "MAX_CHARS",
    "MAX_DEPTH",
    "MAX_EXPONENT",
    "MAX_MAGNITUDE",
    "MAX_NODES",
    "ArithmeticRefused",
    "evaluate",
    "numbers_in",
]

MAX_CHARS = 300  # an expression over a handful of quoted numbers is far shorter
MAX_NODES = 120
MAX_DEPTH = 32  # operators nested this deep (a sum of 30 numbers is 30 deep)
MAX_EXPONENT = 64  # 10 ** 64 is past any quantity a document states
MAX_MAGNITUDE = 1e18  # results and intermediate values beyond this are refused

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_CALLS = ("round", "abs", "min", "max", "sum")


class ArithmeticRefused(ValueError):
    """The text is not a safe arithmetic expression (the message says why, in one line)."""


def evaluate(text: str) -> float:
    """The value of an arithmetic expression.

    Args:
        text: One expression, e.g. `(1358 - 1209) / 1209 * 100` (thousands separators are not
            numbers in Python: `1,358` is refused as a tuple).

    Returns:
        Its value as a float (integers too: `7 // 2` is 3.0).

    Raises:
        ArithmeticRefused: Anything but whitelisted arithmetic, too long, too deep, too large,
            a division by zero or a non-real result.
    """
    if not isinstance(text, str):
        raise ArithmeticRefused(f"not arithmetic: expected text, got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise ArithmeticRefused("not arithmetic: the expression is empty")
    if len(source) > MAX_CHARS:
        raise ArithmeticRefused(
            f"expression too long: {len(source)} characters (at most {MAX_CHARS})"
        )
    if _bracket_depth(source) > MAX_DEPTH:
        raise ArithmeticRefused(f"expression nested too deep (more than {MAX_DEPTH} levels)")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ArithmeticRefused(f"not arithmetic: a syntax error ({exc.msg})") from None
    except (ValueError, MemoryError, RecursionError) as exc:  # null bytes, parser limits
        raise ArithmeticRefused(f"not arithmetic: unparsable ({type(exc).__name__})") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_NODES:
        raise ArithmeticRefused(f"expression too large: {nodes} syntax nodes (at most {MAX_NODES})")
    value = _value(tree.body, 1)
    if isinstance(value, list):
        raise ArithmeticRefused(
            "not arithmetic: a list or tuple is not a number (write 1358, not 1,358)"
        )
    return float(value)


def numbers_in(text: str) -> tuple[float, ...]:
    """The numeric constants of an expression, in order (the operands to cite).

    Raises:
        ArithmeticRefused: As `evaluate` (the text is checked first).
    """
    evaluate(text)
    tree = ast.parse(text.strip(), mode="eval")
    constants = [
        node for node in ast.walk(tree) if isinstance(node, ast.Constant) and _is_number(node.value)
    ]
    constants.sort(key=lambda node: (node.lineno, node.col_offset))
    return tuple(float(node.value) for node in constants)


def _bracket_depth(text: str) -> int:
    """The deepest nesting of brackets in `text` (checked before parsing: parentheses leave
    no node in the tree)."""
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _value(node: ast.expr, depth: int) -> float | list[float]:
    """The checked value of `node` (a list only for a `[...]`/`(...)` argument of a call)."""
    if depth > MAX_DEPTH:
        raise ArithmeticRefused(f"expression nested too deep (more than {MAX_DEPTH} levels)")
    if isinstance(node, ast.Constant):
        if not _is_number(node.value):
            raise ArithmeticRefused(f"not arithmetic: a {type(node.value).__name__} constant")
        try:
            return _checked(float(node.value))
        except OverflowError:  # an integer literal past a float's range
            raise ArithmeticRefused(f"result too large (over {MAX_MAGNITUDE:g})") from None
    if isinstance(node, ast.BinOp):
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ArithmeticRefused(f"not arithmetic: the operator {type(node.op).__name__}")
        left, right = _number(node.left, depth), _number(node.right, depth)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ArithmeticRefused(f"exponent too large: {right:g} (at most {MAX_EXPONENT})")
        try:
            result = op(left, right)
        except ZeroDivisionError:
            raise ArithmeticRefused("division by zero") from None
        except OverflowError:
            raise ArithmeticRefused(f"result too large (over {MAX_MAGNITUDE:g})") from None
        if isinstance(result, complex):
            raise ArithmeticRefused("not a real number (a negative number to a fractional power)")
        return _checked(result)
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise ArithmeticRefused(f"not arithmetic: the operator {type(node.op).__name__}")
        return unary(_number(node.operand, depth))
    if isinstance(node, ast.Call):
        return _call(node, depth)
    if isinstance(node, ast.List | ast.Tuple):
        return [_number(item, depth) for item in node.elts]
    raise ArithmeticRefused(f"not arithmetic: {_what(node)}")


def _number(node: ast.expr, depth: int) -> float:
    value = _value(node, depth + 1)
    if isinstance(value, list):
        raise ArithmeticRefused("not arithmetic: a list or tuple used as a number")
    return value


def _call(node: ast.Call, depth: int) -> float:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in _CALLS:
        raise ArithmeticRefused(
            f"not arithmetic: a call of something other than {', '.join(_CALLS)}"
        )
    if node.keywords:
        raise ArithmeticRefused(f"not arithmetic: keyword arguments to {name}")
    args = [_value(arg, depth + 1) for arg in node.args]
    if name in ("sum", "min", "max") and len(args) == 1 and isinstance(args[0], list):
        values = args[0]
    elif any(isinstance(a, list) for a in args):
        raise ArithmeticRefused(f"not arithmetic: a list or tuple among {name}'s arguments")
    else:
        values = [a for a in args if not isinstance(a, list)]
    if name == "sum":
        return _checked(math.fsum(values))
    if not values:
        raise ArithmeticRefused(f"not arithmetic: {name} of nothing")
    if name == "abs":
        if len(values) != 1:
            raise ArithmeticRefused("not arithmetic: abs takes one number")
        return abs(values[0])
    if name == "round":
        if len(values) not in (1, 2) or (len(values) == 2 and values[1] != int(values[1])):
            raise ArithmeticRefused("not arithmetic: round takes a number and whole digits")
        digits = int(values[1]) if len(values) == 2 else 0
        if abs(digits) > 15:
            raise ArithmeticRefused("not arithmetic: round to at most 15 digits")
        return _checked(float(round(values[0], digits)))
    return min(values) if name == "min" else max(values)


def _checked(value: float) -> float:
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ArithmeticRefused(f"result too large (over {MAX_MAGNITUDE:g})")
    return value


def _what(node: ast.expr) -> str:
    """What a refused node is, in words."""
    names = {
        ast.Name: "a name",
        ast.Attribute: "an attribute",
        ast.Subscript: "a subscript",
        ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a comprehension",
        ast.Compare: "a comparison",
        ast.BoolOp: "a boolean operator",
        ast.IfExp: "a conditional",
        ast.JoinedStr: "a string",
        ast.NamedExpr: "an assignment",
        ast.Starred: "a starred argument",
        ast.Dict: "a dict",
        ast.Set: "a set",
        ast.Await: "an await",
        ast.Yield: "a yield",
        ast.YieldFrom: "a yield",
        ast.Slice: "a slice",
    }
    for kind, words in names.items():
        if isinstance(node, kind):
            return words
    return f"a {type(node).__name__} expression"
