"""Re-execute a rationale's arithmetic with the client's real numbers.

The server reasons about stand-in numbers ("Jack has 11 pens … 11 + 4 = 15"). Mapping each
stand-in back gives "Jack has 8 pens … 8 + 4 = 15": right numbers, wrong results. This module
rewrites the steps instead: every ``expression = result`` step whose expression uses a
stand-in (or the result of an earlier rewritten step) is evaluated again with the original
values (:mod:`simpleeval`, no Python ``eval``), its result is rewritten in the server's
format, and later mentions of the old result take the new one ("so Jack has 12 pens").

A step that used a stand-in is re-executed even where the server's own arithmetic on its
stand-ins was wrong (small teachers slip on large numbers; the plan is what the client wants
from them). A step that uses no stand-in is never touched, right or wrong. Results are
rounded to the server's decimals, at least two.

Numbers are compared by value: "$1,200", "1200" and "1200.0" are the same number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from simpleeval import SimpleEval

__all__ = [
    "NumberToken",
    "Step",
    "arithmetic_steps",
    "calculate",
    "evaluate",
    "parse_number",
    "reexecute",
]

_NUM = r"\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?"
#: A number token: not inside a word or another number ("A12", "3.5.1", "2nd" are not); a
#: minus sign is its own only when attached and not after a word or number ("= -4", not "6-4").
NUMBER_RE = re.compile(
    rf"(?<![\w.,$])(?<![A-Za-z]-)(?:-(?=[\d$]))?(?:{_NUM})(?![\w]|[.,]\d|-[A-Za-z])"
)
_OP = r"\s*(?:[-+*/×÷xX]|of)\s*"
_UNIT = r"(?:\s*(?:[A-Z]{3}|€|£)(?![\w]))?"  # "118 EUR + 195 EUR": a currency after a number
# "7 sets * 130 chairs", "576 pages ÷ 8 pages/day": up to two lower-case words after a number
# (not an operator word); they are dropped before evaluation.
_WORD = r"\b(?!(?:of|x|equals|is|are|and|so|then)\b)[a-z]+(?:/[a-z]+)?\b"
_UNIT += rf"(?:\s+{_WORD}){{0,2}}"
_OPERAND = rf"[(\s]*{_NUM}{_UNIT}[)\s]*"
# "13 - 3", "28 / 2": two operands of a difference or a quotient
_PAIR_RE = re.compile(
    rf"(?P<lead>\s*)(?P<a>{_NUM}{_UNIT})(?P<op>\s*[-/÷]\s*)(?P<b>{_NUM}{_UNIT})"
    r"(?P<tail>\s*)"
)
_STEP_RE = re.compile(
    rf"(?P<lhs>{_OPERAND}(?:{_OP}{_OPERAND})+?)\s*(?:=|equals)\s*(?P<rhs>-?{_NUM})"
    r"(?![\w]|[.,]\d)"
)
_EVAL = SimpleEval(functions={}, names={})
_EXACT = 12  # written values keep all their digits (computed ones are rounded already)


@dataclass(frozen=True)
class NumberToken:
    """A number as written: its value and its decorations."""

    value: Decimal
    decimals: int
    dollar: bool
    percent: bool
    commas: bool

    def format(self, value: Decimal, *, cap: int = 2) -> str:
        """``value`` written the way this token was written: its decimals at least, more
        when ``value`` needs them (up to ``cap`` places beyond the token's own)."""
        natural = max(0, -int(value.normalize().as_tuple().exponent))
        places = max(self.decimals, min(natural, max(cap, self.decimals)))
        size = abs(value)
        core = f"{size:,.{places}f}" if self.commas else f"{size:.{places}f}"
        sign = "-" if value < 0 else ""
        return sign + ("$" if self.dollar else "") + core + ("%" if self.percent else "")


def parse_number(text: str) -> NumberToken | None:
    """``"$1,200.50"`` → NumberToken(1200.50, 2 decimals, dollar, no percent, commas)."""
    raw = text.strip()
    sign = "-" if raw.startswith("-") else ""
    raw = raw.lstrip("-")
    dollar, percent = raw.startswith("$"), raw.endswith("%")
    core = sign + raw.lstrip("$").rstrip("%")
    try:
        value = Decimal(core.replace(",", ""))
    except InvalidOperation:
        return None
    decimals = len(core.split(".")[1]) if "." in core else 0
    return NumberToken(value, decimals, dollar, percent, "," in core)


def _python(lhs: str, values: Mapping[Decimal, Decimal] | None) -> str | None:
    """The expression as Python arithmetic (numbers replaced through ``values``)."""
    if lhs.count("(") != lhs.count(")"):
        lhs = lhs.strip().lstrip("(").rstrip(")")
        if lhs.count("(") != lhs.count(")"):
            return None

    def number(m: re.Match[str]) -> str:
        tok = parse_number(m.group())
        assert tok is not None
        v = values.get(tok.value, tok.value) if values is not None else tok.value
        return f"({v:f}/100)" if tok.percent else f"({v:f})"

    expr = NUMBER_RE.sub(number, re.sub(r"\b[A-Z]{3}\b|[€£]", " ", lhs))
    expr = re.sub(_WORD, " ", expr)  # unit words ("sets", "pages/day")
    expr = re.sub(r"[×xX]", "*", expr).replace("÷", "/")
    return re.sub(r"\bof\b", "*", expr)


def evaluate(expr: str) -> float:
    """The value of a Python-syntax arithmetic expression (numbers, ``+ - * /``, parentheses),
    by :mod:`simpleeval`: no names, no functions, no ``eval``.

    Raises :class:`ZeroDivisionError` on a division by zero and :class:`ValueError` on
    anything else that is not such an expression.
    """
    try:
        out = _EVAL.eval(expr)
    except ZeroDivisionError:
        raise
    except Exception as exc:  # simpleeval raises SyntaxError and its own errors
        raise ValueError(f"not an arithmetic expression: {expr!r}") from exc
    if not isinstance(out, (int, float)) or isinstance(out, bool):
        raise ValueError(f"not a number: {expr!r}")
    return float(out)


def _evaluate(expr: str | None) -> Decimal | None:
    if expr is None:
        return None
    try:
        return Decimal(str(round(evaluate(expr), 10)))
    except (ValueError, ZeroDivisionError):
        return None


def _agrees(computed: Decimal, written: NumberToken) -> bool:
    """Whether ``computed`` rounds to what the server wrote."""
    tolerance = Decimal(5) / Decimal(10) ** (written.decimals + 1)
    return abs(computed - written.value) <= tolerance + Decimal("1e-9")


def _map_numbers(text: str, values: Mapping[Decimal, Decimal]) -> str:
    def back(m: re.Match[str]) -> str:
        tok = parse_number(m.group())
        if tok is None or tok.value not in values:
            return m.group()
        return tok.format(values[tok.value], cap=_EXACT)

    return NUMBER_RE.sub(back, text)


def _turned(op: str, server: Decimal, redone: Decimal) -> bool:
    """Whether the real numbers turned a larger-minus-smaller difference negative, or a
    larger-over-smaller quotient below one."""
    if op.strip() == "-":
        return redone < 0 <= server
    return 0 < redone < 1 <= server


def _rewrite_step(m: re.Match[str], values: dict[Decimal, Decimal], every: bool) -> str:
    lhs, rhs = m.group("lhs"), m.group("rhs")
    used = [parse_number(n.group()) for n in NUMBER_RE.finditer(lhs)]
    if not every and not any(t is not None and t.value in values for t in used):
        return m.group()  # a step about the client's own (kept) numbers: not ours to touch
    written = parse_number(rhs)
    assert written is not None
    new_lhs = _map_numbers(lhs, values)
    redone = _evaluate(_python(lhs, values))
    if redone is None:  # not arithmetic simpleeval accepts: map the numbers, nothing more
        return m.group().replace(lhs, new_lhs, 1)
    server = _evaluate(_python(lhs, None))
    if written.percent and server is not None and not _agrees(server, written):
        redone *= 100  # "12 / 48 = 25%": the server wrote a fraction as a percentage
    pair = _PAIR_RE.fullmatch(new_lhs)
    if not every and pair and server is not None and _turned(pair["op"], server, redone):
        # The server took the smaller stand-in from (or divided the larger by) the other:
        # keep that plan on the real numbers.
        new_lhs = pair.expand(r"\g<lead>\g<b>\g<op>\g<a>\g<tail>")
        redone = -redone if pair["op"].strip() == "-" else 1 / redone
    redone = round(redone, max(written.decimals, 2))
    values[written.value] = redone
    head = m.group()[: m.start("rhs") - m.start()].replace(lhs, new_lhs, 1)
    return head + written.format(redone)


@dataclass(frozen=True)
class Step:
    """One ``a op b = c`` step as written: where it starts, its text, where its result
    starts and the result's value."""

    start: int
    text: str
    result_start: int
    result: Decimal


def arithmetic_steps(text: str) -> list[Step]:
    """The ``a op b = c`` steps of ``text``, in order."""
    out = []
    for m in _STEP_RE.finditer(text):
        tok = parse_number(m.group("rhs"))
        assert tok is not None
        start = m.start() + len(m.group()) - len(m.group().lstrip())
        out.append(Step(start, text[start : m.end()], m.start("rhs"), tok.value))
    return out


def reexecute(
    text: str, substitutions: Mapping[Decimal, Decimal], *, every_step: bool = False
) -> str:
    """``text`` with stand-in numbers mapped back and dependent steps recomputed.

    ``substitutions`` maps each stand-in value to the original value it replaced.
    ``every_step``: recompute every step, not only those that used a substitution (a
    calculator for a model's own chain of thought: :func:`calculate`).
    """
    if not substitutions and not every_step:
        return text
    values = dict(substitutions)
    out, pos = [], 0
    for m in _STEP_RE.finditer(text):
        out.append(_map_numbers(text[pos : m.start()], values))
        out.append(_rewrite_step(m, values, every_step))
        pos = m.end()
    out.append(_map_numbers(text[pos:], values))
    return "".join(out)


def calculate(text: str) -> str:
    """A calculator over a chain of thought: every ``a op b = c`` step gets its exact result
    and later mentions of a corrected result (the stated answer included) follow it.

    ``"118 + 195 = 225. So the answer is 225."`` → ``"118 + 195 = 313. So the answer is
    313."`` The plan (which numbers to combine, and how) stays the model's.
    """
    return reexecute(text, {}, every_step=True)
