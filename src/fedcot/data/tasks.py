"""Tasks: how an example becomes a prompt, and how a model's answer is read back.

A :class:`Task` knows one answer format (multiple choice, math, NLI, yes/no). It turns an
:class:`Example` into a chat or plain-completion prompt (optionally few-shot and
chain-of-thought), names the gold answer as a target string, and parses free-form model
output back into the canonical ``label`` form so that it can be compared with the gold label.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedcot.data.arithmetic import evaluate
from fedcot.data.prompts import Prompt
from fedcot.errors import ConfigError, DataError

__all__ = [
    "NLI_LABELS_2WAY",
    "NLI_LABELS_3WAY",
    "TASK_NAMES",
    "Example",
    "MathTask",
    "MultipleChoiceTask",
    "NLITask",
    "Task",
    "YesNoTask",
    "evaluate_expression",
    "format_number",
    "get_task",
    "has_answer_marker",
    "parse_number",
]

NLI_LABELS_3WAY: tuple[str, ...] = ("entailment", "neutral", "contradiction")
NLI_LABELS_2WAY: tuple[str, ...] = ("entailment", "not_entailment")

#: The phrase that ends every chain-of-thought target ("... So the answer is <answer>.").
COT_ANSWER_PREFIX = "So the answer is"
#: The generation budget of chain-of-thought evaluation (``fedcot eval --cot``).
COT_MAX_NEW_TOKENS = 256


# --------------------------------------------------------------------------------------
# Example
# --------------------------------------------------------------------------------------


@dataclass
class Example:
    """One task instance in canonical form.

    ``label`` is the gold answer in the task's label form: the choice text (multiple choice),
    a normalised number string such as ``"450"`` or ``"2.5"`` (math), a label name (NLI) or
    ``"yes"``/``"no"``. ``premise`` is the NLI premise, or the passage/context of another
    task (rendered as ``"Passage: ..."``). ``rationale``/``rationale_label`` hold a teacher
    chain of thought (e.g. PaLM's) and the answer it concluded with, when the source has one.
    """

    id: str
    question: str
    label: str
    choices: list[str] = field(default_factory=list)
    premise: str | None = None
    rationale: str | None = None
    rationale_label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with every field (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        """Build an example from :meth:`to_dict` output; unknown keys are kept in ``meta``."""
        names = {f.name for f in fields(cls)}
        missing = [k for k in ("id", "question", "label") if k not in d]
        if missing:
            raise DataError(
                f"an example dict lacks the field(s) {', '.join(missing)}",
                hint="an example needs at least 'id', 'question' and 'label'",
            )
        kwargs = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        kwargs["choices"] = list(kwargs.get("choices") or [])
        kwargs["meta"] = {**dict(kwargs.get("meta") or {}), **extra}
        kwargs["id"] = str(kwargs["id"])
        kwargs["label"] = str(kwargs["label"])
        return cls(**kwargs)


# --------------------------------------------------------------------------------------
# Numbers and arithmetic
# --------------------------------------------------------------------------------------

# A number as written in text: "1,250", "3.50", ".5", "450". Thousands groups need 3 digits so
# that "3,4" (a list) is not read as one number.
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# A number that may carry a minus sign; the sign only counts at a word start ("-5", "(-5",
# "$-5"), not inside "10-5", where it is an operator.
_SIGNED_NUM_RE = re.compile(r"(?:(?<![\w)])-)?" + r"\$?" + _NUM)
_TOKEN_RE = re.compile(r"\s*(" + _NUM + r"|[-+*/()=])")
_CURRENCY = "$€£¥"
_UNICODE_OPS = str.maketrans({"−": "-", "–": "-", "×": "*", "÷": "/", "·": "*"})


def format_number(x: float) -> str:
    """Canonical string of a number: ``450.0 -> "450"``, ``2.50 -> "2.5"``, ``-0.0 -> "0"``."""
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x}")
    r = round(x)
    if abs(x - r) <= 1e-9 * max(1.0, abs(x)):
        return str(int(r))
    s = f"{x:.10f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _tokenize(text: str) -> list[str]:
    """Arithmetic tokens from the start of ``text``; stops at the first other character."""
    text = text.translate(_UNICODE_OPS)
    out: list[str] = []
    pos = 0
    while True:
        # Currency signs sit in front of numbers ("$3.50"); they carry no arithmetic meaning.
        while pos < len(text) and (text[pos] in _CURRENCY or text[pos].isspace()):
            pos += 1
        m = _TOKEN_RE.match(text, pos)
        if not m:
            return out
        out.append(m.group(1).replace(",", ""))
        pos = m.end()


def _value_of(tokens: list[str]) -> float:
    """The value of arithmetic tokens (:func:`fedcot.data.arithmetic.evaluate`); raises
    :class:`ValueError` unless they form one whole expression."""
    # Numbers are written as Python floats ("007" is not a Python literal; "2 * * 3" with
    # spaces is not a power).
    expr = " ".join(f"{float(t)!r}" if t[0].isdigit() or t[0] == "." else t for t in tokens)
    return evaluate(expr)


def _longest_prefix_value(tokens: list[str]) -> float:
    """The value of the longest prefix of ``tokens`` that is a whole expression ("3 * 4 )
    ..." → 12); math.nan where it divides by zero (a stated answer without a value)."""
    for end in range(len(tokens), 0, -1):
        try:
            return _value_of(tokens[:end])
        except ZeroDivisionError:
            return math.nan
        except ValueError:
            continue
    raise ValueError("no arithmetic")


def evaluate_expression(text: str) -> float:
    """Evaluate a whole arithmetic expression such as ``"( 10.0 * 45.0 )"`` or ``"$1,250"``.

    Supports ``+ - * /`` (also ``× ÷``), unary minus, parentheses, decimals, thousands
    commas and currency signs. Raises :class:`ValueError` unless all of ``text`` is one
    valid expression.
    """
    stripped = text.strip().rstrip(".").strip()
    toks = _tokenize(stripped)
    if not toks or "=" in toks:
        raise ValueError(f"not an arithmetic expression: {text!r}")
    # Every character must have become a token: compare against a re-tokenised remainder.
    rebuilt = "".join(toks)
    compact = re.sub(rf"[\s,{re.escape(_CURRENCY)}]", "", stripped.translate(_UNICODE_OPS))
    if rebuilt != compact:
        raise ValueError(f"not an arithmetic expression: {text!r}")
    try:
        return _value_of(toks)
    except ZeroDivisionError as exc:
        raise ValueError(f"division by zero: {text!r}") from exc


def _leading_value(text: str) -> float | None:
    """Value of the arithmetic at the start of ``text`` (e.g. ``"(10 * 45). Then ..."``).

    When the leading arithmetic contains ``=`` ("10 - (3 + 6) = 1") the stated result after
    the last ``=`` wins: that is what the writer committed to.
    """
    toks = _tokenize(text)
    groups: list[list[str]] = [[]]
    for t in toks:
        if t == "=":
            groups.append([])
        else:
            groups[-1].append(t)
    for g in reversed(groups):
        if not g:
            continue
        try:
            return _longest_prefix_value(g)
        except ValueError:
            continue
    return None


def _number_from_match(s: str) -> float:
    return float(s.replace(",", "").replace("$", "").replace(" ", ""))


def parse_number(text: str) -> float | None:
    """The number a short answer text states: leading arithmetic, else its first number."""
    text = text.translate(_UNICODE_OPS)
    v = _leading_value(text)
    if v is not None:
        return v if math.isfinite(v) else None
    m = _SIGNED_NUM_RE.search(text)
    return _number_from_match(m.group(0)) if m else None


# --------------------------------------------------------------------------------------
# Answer markers shared by all tasks
# --------------------------------------------------------------------------------------

# "So the answer is (c)", "The final answer is 7", "Answer: C", "#### 72". The first marker
# that yields a parse wins: completions that run on into invented few-shot turns carry more
# markers later, and those belong to other questions.
_MARKER_RE = re.compile(
    r"(?:(?:final\s+)?answer\s+(?:is|would\s+be|will\s+be)\s*:?|answer\s*:|####)", re.I
)
# One answer clause: up to a line break or a sentence end (". " keeps "d.c." intact).
_CLAUSE_END_RE = re.compile(r"\n|\.(?:\s|$)")


def _marker_segments(text: str) -> list[str]:
    """The clause after each answer marker, in order."""
    out = []
    for m in _MARKER_RE.finditer(text):
        rest = text[m.end() :]
        end = _CLAUSE_END_RE.search(rest)
        out.append(rest[: end.start()] if end else rest)
    return out


def has_answer_marker(text: str) -> bool:
    """Whether ``text`` states a final answer ("the answer is", "answer:", "####")."""
    return _MARKER_RE.search(text) is not None


def _first_line(text: str) -> str:
    s = text.strip()
    return s.split("\n", 1)[0]


class _NoAnswer(Exception):
    """A clause states an unusable answer: two of them ("(c) or (d)"), or "10 / 0"."""


def _with_passage(ex: Example, text: str) -> str:
    """``text`` after ``"Passage: ..."`` when the example has one (its ``premise`` field,
    which non-NLI tasks use for a reading passage or context)."""
    if ex.premise and ex.premise.strip():
        return f"Passage: {ex.premise}\n{text}"
    return text


# --------------------------------------------------------------------------------------
# Task base class
# --------------------------------------------------------------------------------------


class Task(abc.ABC):
    """One answer format: prompt building, gold targets and answer extraction."""

    name: str
    kind: str
    #: Stop strings for plain-completion answers: a blank line or an invented next turn.
    stop: tuple[str, ...] = ("\n\n", "\nQuestion:", "\nPassage:")

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # ---- prompt side -------------------------------------------------------------------

    @abc.abstractmethod
    def input_text(self, ex: Example) -> str:
        """The example as text, without any instruction."""

    @abc.abstractmethod
    def instruction(self, *, cot: bool = False) -> str:
        """What the model is asked to do; with ``cot`` it asks for step-by-step reasoning."""

    @abc.abstractmethod
    def answer_text(self, ex: Example) -> str:
        """The gold answer written as a target string (e.g. ``"(c) wooded area"``)."""

    def target_text(self, ex: Example, *, cot: bool = False) -> str:
        """Training/few-shot target: the answer, or ``"<rationale> So the answer is <a>."``."""
        answer = self.answer_text(ex)
        if not cot:
            return answer
        rationale = (ex.rationale or "").strip()
        tail = f"{COT_ANSWER_PREFIX} {answer}."
        return f"{rationale} {tail}" if rationale else tail

    def prompt(
        self,
        ex: Example,
        *,
        chat: bool,
        fewshot: Sequence[Example] = (),
        cot: bool = False,
    ) -> Prompt:
        """The prompt for ``ex``: a chat conversation (``chat=True``) or a completion string.

        Few-shot examples become prior user/assistant turns (chat) or ``"...\\nAnswer: <t>"``
        blocks (plain); with ``cot`` their targets include the rationale.
        """
        return self.prompt_for_text(self.input_text(ex), chat=chat, fewshot=fewshot, cot=cot)

    def prompt_for_text(
        self,
        text: str,
        *,
        chat: bool,
        fewshot: Sequence[Example] = (),
        cot: bool = False,
    ) -> Prompt:
        """Like :meth:`prompt`, for an example already written as text (``input_text`` form).

        FedCoT uses it to wrap a *perturbed* example in the public few-shot template.
        """
        instr = self.instruction(cot=cot)
        if chat:
            messages: list[dict[str, str]] = []
            for shot in fewshot:
                # Every user turn carries the instruction so the final turn looks exactly
                # like the zero-shot prompt.
                messages.append({"role": "user", "content": f"{instr}\n\n{self.input_text(shot)}"})
                messages.append({"role": "assistant", "content": self.target_text(shot, cot=cot)})
            messages.append({"role": "user", "content": f"{instr}\n\n{text}"})
            return messages
        blocks = [instr]
        for shot in fewshot:
            blocks.append(f"{self.input_text(shot)}\nAnswer: {self.target_text(shot, cot=cot)}")
        blocks.append(f"{text}\nAnswer:")
        return "\n\n".join(blocks)

    # ---- answer side -------------------------------------------------------------------

    def candidates(self, ex: Example) -> list[str] | None:
        """Fixed answer strings for likelihood scoring, or ``None`` (open-ended answers)."""
        return None

    def candidate_label(self, ex: Example, i: int) -> str:
        """The label (in ``label`` form) of ``candidates(ex)[i]``."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed candidates")

    @abc.abstractmethod
    def normalize_label(self, value: Any, ex: Example | None = None) -> str:
        """Bring a raw gold label from a data file into ``label`` form.

        Raises :class:`ValueError` (with a readable reason) when the value does not fit.
        """

    @abc.abstractmethod
    def _parse_clause(self, clause: str, ex: Example, *, anchored: bool) -> str | None:
        """Parse one answer clause. ``anchored``: the clause directly follows a marker or is
        the whole short output, so loose forms (a bare letter, "yes") are trusted."""

    def _parse_unmarked(self, text: str, ex: Example) -> str | None:
        """Fallback when no marker yields an answer: try the first line, then the whole text."""
        first = _first_line(text)
        try:
            got = self._parse_clause(first, ex, anchored=True)
        except _NoAnswer:
            if first == text.strip():
                return None  # a one-line hedge ("(c) or (d)") is no answer
            got = None
        if got is not None:
            return got
        try:
            return self._parse_clause(text, ex, anchored=False)
        except _NoAnswer:
            return None

    def extract_answer(self, text: str, ex: Example) -> str | None:
        """Parse a model output into ``label`` form; ``None`` if nothing is parseable.

        The clause after the first answer marker ("the answer is", "answer:", "####") that
        parses wins. A clause naming two different answers counts as no answer. Without a
        marker the first line, then the whole text is searched.
        """
        if not text or not text.strip():
            return None
        for clause in _marker_segments(text):
            try:
                got = self._parse_clause(clause, ex, anchored=True)
            except _NoAnswer:
                return None
            if got is not None:
                return got
        return self._parse_unmarked(text, ex)

    def is_correct(self, pred: str | None, ex: Example) -> bool:
        """Whether a parsed prediction matches the gold label."""
        if pred is None:
            return False
        return pred.strip().lower() == ex.label.strip().lower()


# --------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_ARTICLE = re.compile(r"^(?:the|an?)\s+")


class MultipleChoiceTask(Task):
    """Questions with lettered choices (a), (b), ...; ``label`` is the correct choice text."""

    kind = "multiple-choice"

    def __init__(
        self,
        name: str = "multiple-choice",
        num_choices: int | None = None,
        answer_style: str = "letter",
    ) -> None:
        super().__init__(name)
        #: When set, every example must have exactly this many choices.
        self.num_choices = num_choices
        if answer_style not in ("letter", "text"):
            raise ConfigError(
                f"unknown answer style {answer_style!r}", hint="use 'letter' or 'text'"
            )
        #: ``"letter"``: answers are written ``"(c) wooded area"``; ``"text"``: the choice
        #: text alone, ``"wooded area"`` (a small model learns it far more easily, since the
        #: letter carries no meaning of its own).
        self.answer_style = answer_style

    def input_text(self, ex: Example) -> str:
        """``"Question: ...\\nAnswer choices:\\n(a) ...\\n(b) ..."`` (after ``"Passage: ..."``
        when the example has a passage)."""
        lines = [f"Question: {ex.question}", "Answer choices:"]
        lines += [f"({_LETTERS[i]}) {c}" for i, c in enumerate(ex.choices)]
        return _with_passage(ex, "\n".join(lines))

    def instruction(self, *, cot: bool = False) -> str:
        """The multiple-choice instruction (letter answer, or reasoning then the answer)."""
        if self.answer_style == "text":
            if cot:
                return (
                    "Answer the multiple-choice question. Think step by step, then end with "
                    '"So the answer is <choice text>."'
                )
            return "Answer the multiple-choice question with the text of the correct choice."
        if cot:
            return (
                "Answer the multiple-choice question. Think step by step, then end with "
                '"So the answer is (<letter>) <choice text>."'
            )
        return "Answer the multiple-choice question with the letter of the correct choice."

    def _index(self, ex: Example) -> int:
        for i, c in enumerate(ex.choices):
            if c == ex.label:
                return i
        low = ex.label.strip().lower()
        for i, c in enumerate(ex.choices):
            if c.strip().lower() == low:
                return i
        raise ValueError(f"label {ex.label!r} of example {ex.id!r} is not one of its choices")

    def answer_text(self, ex: Example) -> str:
        """``"(c) wooded area"``."""
        i = self._index(ex)
        if self.answer_style == "text":
            return ex.choices[i]
        return f"({_LETTERS[i]}) {ex.choices[i]}"

    def candidates(self, ex: Example) -> list[str]:
        """Every choice in answer form: ``["(a) ...", "(b) ...", ...]`` (or the bare texts)."""
        if self.answer_style == "text":
            return list(ex.choices)
        return [f"({_LETTERS[i]}) {c}" for i, c in enumerate(ex.choices)]

    def candidate_label(self, ex: Example, i: int) -> str:
        """The choice text of candidate ``i``."""
        return ex.choices[i]

    def normalize_label(self, value: Any, ex: Example | None = None) -> str:
        """Map a choice text (any case), a letter (``"c"``, ``"(C)"``) or an index to the
        choice text."""
        if ex is None or not ex.choices:
            raise ValueError("a multiple-choice example needs its choices to check the label")
        if self.num_choices is not None and len(ex.choices) != self.num_choices:
            raise ValueError(
                f"expected {self.num_choices} choices for task {self.name!r}, got {len(ex.choices)}"
            )
        if isinstance(value, bool):
            raise ValueError(f"label {value!r} is not a choice")
        if isinstance(value, int):
            if 0 <= value < len(ex.choices):
                return ex.choices[value]
            raise ValueError(f"label index {value} is out of range")
        s = str(value).strip()
        if s in ex.choices:
            return s
        for c in ex.choices:
            if c.strip().lower() == s.lower():
                return c
        m = re.fullmatch(r"\(?([a-zA-Z])\)?", s)
        if m and _LETTERS.index(m.group(1).lower()) < len(ex.choices):
            return ex.choices[_LETTERS.index(m.group(1).lower())]
        raise ValueError(f"label {s!r} is not one of the choices {ex.choices}")

    # Letter mentions: "(c)" anywhere, or "c)" at a word start; not when negated ("not (a)").
    _PAREN_LETTER = re.compile(r"(?<![\w(])\(([a-zA-Z])\)|(?<![\w(])([a-zA-Z])\)")
    _NEGATED = re.compile(r"(?:\bnot|n't|\bexcept)\s*$", re.I)
    # A bare letter as the whole answer: "C", "c.", "C:" (after "answer:"), "option c".
    _BARE_LETTER = re.compile(r"^\W{0,3}([a-zA-Z])\s*(?:[.,:;!]|$)")
    _OPTION_LETTER = re.compile(r"\b(?:option|choice|letter)\s+\(?([a-zA-Z])\b\)?", re.I)

    def _letters(self, clause: str, n: int) -> list[int]:
        out = []
        for m in self._PAREN_LETTER.finditer(clause):
            letter = (m.group(1) or m.group(2)).lower()
            if self._NEGATED.search(clause[: m.start()]):
                continue
            idx = _LETTERS.index(letter)
            if idx < n:
                out.append(idx)
        for m in self._OPTION_LETTER.finditer(clause):
            idx = _LETTERS.index(m.group(1).lower())
            if idx < n and not self._NEGATED.search(clause[: m.start()]):
                out.append(idx)
        return out

    def _choice_text(self, clause: str, ex: Example) -> str | None:
        """The longest choice whose text occurs in ``clause`` (case-insensitive, plurals,
        a leading article optional: "mind needs time" matches "the mind needs time")."""
        low = " ".join(clause.lower().split())
        best: tuple[int, int, str] | None = None  # (-length, position, choice)
        for c in ex.choices:
            cl = " ".join(c.strip().lower().split())
            core = _ARTICLE.sub("", cl)
            if not core:
                continue
            pattern = r"(?<!\w)(?:(?:the|an?)\s+)?" + re.escape(core) + r"(?:s|es)?(?!\w)"
            m = re.search(pattern, low)
            if m:
                key = (-len(cl), m.start(), c)
                if best is None or key < best:
                    best = key
        return best[2] if best else None

    def _parse_clause(self, clause: str, ex: Example, *, anchored: bool) -> str | None:
        n = len(ex.choices)
        letters = self._letters(clause, n)
        if letters:
            if anchored:
                if len(set(letters)) > 1:
                    raise _NoAnswer
                return ex.choices[letters[0]]
            # In free prose the last mention is the conclusion.
            return ex.choices[letters[-1]]
        if anchored:
            m = self._BARE_LETTER.match(clause.strip())
            if m:
                idx = _LETTERS.index(m.group(1).lower())
                if idx < n:
                    return ex.choices[idx]
        return self._choice_text(clause, ex)

    def is_correct(self, pred: str | None, ex: Example) -> bool:
        """Case-insensitive match of the predicted choice text with the gold choice."""
        return pred is not None and pred.strip().lower() == ex.label.strip().lower()


# --------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------


class MathTask(Task):
    """Word problems with a numeric answer; ``label`` is a normalised number string."""

    kind = "math"

    def __init__(self, name: str = "math", rel_tol: float = 1e-4) -> None:
        super().__init__(name)
        #: Relative tolerance of :meth:`is_correct` (answers like 3.3333 vs 10/3).
        self.rel_tol = rel_tol

    def input_text(self, ex: Example) -> str:
        """``"Question: ..."`` (after ``"Passage: ..."`` when the example has a passage)."""
        return _with_passage(ex, f"Question: {ex.question}")

    def instruction(self, *, cot: bool = False) -> str:
        """The math instruction (a number, or reasoning then the number)."""
        if cot:
            return (
                "Solve the math word problem. Reason step by step, then end with "
                '"So the answer is <number>."'
            )
        return "Solve the math word problem. Answer with the final number only."

    def answer_text(self, ex: Example) -> str:
        """The normalised number, e.g. ``"450"``."""
        return ex.label

    def normalize_label(self, value: Any, ex: Example | None = None) -> str:
        """Numbers, number strings ("1,250", "$3.50", "72") and arithmetic expressions
        ("( 10.0 * 45.0 )") become a canonical number string."""
        if isinstance(value, bool):
            raise ValueError(f"label {value!r} is not a number")
        if isinstance(value, (int, float)):
            return format_number(float(value))
        s = str(value)
        if "####" in s:  # GSM8K style: the final answer follows "####"
            s = s.rsplit("####", 1)[1]
        try:
            return format_number(evaluate_expression(s))
        except ValueError as e:
            raise ValueError(f"label {str(value)[:80]!r} is not a number or expression") from e

    def _parse_clause(self, clause: str, ex: Example, *, anchored: bool) -> str | None:
        clause = clause.translate(_UNICODE_OPS)
        if anchored:
            # "The answer is: $1,250", "The answer is (10 * 45)": arithmetic right at the start.
            v = _leading_value(clause.lstrip(" :*"))
            if v is not None and not math.isfinite(v):
                raise _NoAnswer
            if v is None:
                m = _SIGNED_NUM_RE.search(clause)
                v = _number_from_match(m.group(0)) if m else None
        else:
            # Free prose: the last number stated is the most likely conclusion.
            nums = _SIGNED_NUM_RE.findall(clause)
            v = _number_from_match(nums[-1]) if nums else None
        if v is None or not math.isfinite(v):
            return None
        return format_number(v)

    def _parse_unmarked(self, text: str, ex: Example) -> str | None:
        first = _first_line(text)
        # A short first line that is nothing but arithmetic ("450", "(10 * 45)") is the answer;
        # otherwise the last number anywhere.
        try:
            return format_number(evaluate_expression(first))
        except ValueError:
            return self._parse_clause(text, ex, anchored=False)

    def is_correct(self, pred: str | None, ex: Example) -> bool:
        """Numeric comparison with a small relative tolerance."""
        if pred is None:
            return False
        try:
            p = evaluate_expression(pred)
            g = evaluate_expression(ex.label)
        except ValueError:
            return False
        return math.isclose(p, g, rel_tol=self.rel_tol, abs_tol=1e-9)


# --------------------------------------------------------------------------------------
# NLI
# --------------------------------------------------------------------------------------


def _compile_patterns(pairs: Sequence[tuple[str, str]]) -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(r"(?<![\w])" + p + r"(?![\w])", re.I), lab) for p, lab in pairs]


_ANCHOR_PREFIX = r"^\W{0,3}"


class NLITask(Task):
    """Premise/hypothesis pairs; ``label`` is a label name (3-way or 2-way)."""

    kind = "nli"
    stop: tuple[str, ...] = ("\n\n", "\nPremise:")

    def __init__(self, name: str = "nli", labels: Sequence[str] = NLI_LABELS_3WAY) -> None:
        super().__init__(name)
        labels = tuple(labels)
        if labels not in (NLI_LABELS_3WAY, NLI_LABELS_2WAY):
            raise ConfigError(
                f"unsupported NLI label set {labels}",
                hint=f"use {NLI_LABELS_3WAY} or {NLI_LABELS_2WAY}",
            )
        self.labels = labels
        if labels == NLI_LABELS_3WAY:
            anywhere = [
                (r"entail(?:ment|s|ed)?", "entailment"),
                (r"neutral", "neutral"),
                (r"(?:it\s+is\s+)?not\s+possible\s+to\s+tell", "neutral"),
                (r"cannot\s+be\s+determined", "neutral"),
                (r"undetermined", "neutral"),
                (r"contradict(?:ion|s|ory|ed)?", "contradiction"),
            ]
            start = [
                (r"yes", "entailment"),
                (r"true", "entailment"),
                (r"no", "contradiction"),
                (r"false", "contradiction"),
                (r"maybe", "neutral"),
                (r"unknown", "neutral"),
                (r"neither", "neutral"),
            ]
        else:
            anywhere = [
                (r"not[\s_-]?entail(?:ment|s|ed)?", "not_entailment"),
                (r"non[\s_-]?entailment", "not_entailment"),
                (r"(?:does|do|is)\s*(?:not|n't)\s+entail(?:ed|s)?", "not_entailment"),
                (r"entail(?:ment|s|ed)?", "entailment"),
                (r"neutral", "not_entailment"),
                (r"contradict(?:ion|s|ory|ed)?", "not_entailment"),
                (r"(?:it\s+is\s+)?not\s+possible\s+to\s+tell", "not_entailment"),
            ]
            start = [
                (r"yes", "entailment"),
                (r"true", "entailment"),
                (r"no", "not_entailment"),
                (r"false", "not_entailment"),
                (r"maybe", "not_entailment"),
            ]
        self._anywhere = _compile_patterns(anywhere)
        # Yes/no/maybe only count at the very start of an answer: "There is no indication"
        # in a rationale is not an answer.
        self._start = [
            (re.compile(_ANCHOR_PREFIX + p + r"(?![\w])", re.I), lab) for p, lab in start
        ]

    def input_text(self, ex: Example) -> str:
        """``"Premise: ...\\nHypothesis: ..."``."""
        return f"Premise: {ex.premise or ''}\nHypothesis: {ex.question}"

    def instruction(self, *, cot: bool = False) -> str:
        """The NLI instruction listing the label names."""
        if self.labels == NLI_LABELS_3WAY:
            base = "Decide whether the premise entails the hypothesis, contradicts it, or neither."
        else:
            base = "Decide whether the premise entails the hypothesis."
        names = ", ".join(self.labels)
        if cot:
            return (
                f"{base} Reason step by step, then end with "
                f'"So the answer is <label>." where <label> is one of: {names}.'
            )
        return f"{base} Answer with one of: {names}."

    def answer_text(self, ex: Example) -> str:
        """The label name, e.g. ``"neutral"``."""
        return ex.label

    def candidates(self, ex: Example) -> list[str]:
        """The label names."""
        return list(self.labels)

    def candidate_label(self, ex: Example, i: int) -> str:
        """Label name ``i``."""
        return self.labels[i]

    def normalize_label(self, value: Any, ex: Example | None = None) -> str:
        """Integer class ids (0 entailment, 1 neutral / not_entailment, 2 contradiction) or
        label names and synonyms become a label name."""
        if isinstance(value, bool):
            raise ValueError(f"label {value!r} is not an NLI label")
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            i = int(value)
            if 0 <= i < len(self.labels):
                return self.labels[i]
            # A 3-way id under a 2-way task: neutral and contradiction are both "not entailed".
            if self.labels == NLI_LABELS_2WAY and i == 2:
                return "not_entailment"
            raise ValueError(f"label id {i} is out of range for {self.labels}")
        s = str(value).strip().lower()
        if s in self.labels:
            return s
        got = self._parse_clause(s, Example(id="", question="", label=""), anchored=True)
        if got is None:
            raise ValueError(f"label {value!r} is not one of {self.labels}")
        return got

    def _parse_clause(self, clause: str, ex: Example, *, anchored: bool) -> str | None:
        best: tuple[int, int, str] | None = None  # (position, -length, label)
        for pat, lab in self._anywhere:
            m = pat.search(clause)
            if m:
                key = (m.start(), -(m.end() - m.start()), lab)
                if best is None or key < best:
                    best = key
        if anchored:
            stripped = clause.strip()
            for pat, lab in self._start:
                if pat.match(stripped):
                    return lab
        return best[2] if best else None


# --------------------------------------------------------------------------------------
# Yes / no
# --------------------------------------------------------------------------------------


class YesNoTask(Task):
    """Questions answered with yes or no."""

    kind = "yes-no"
    _WORDS: tuple[tuple[str, str], ...] = (
        ("yes", "yes"),
        ("no", "no"),
        ("true", "yes"),
        ("false", "no"),
        ("correct", "yes"),
        ("incorrect", "no"),
    )

    def __init__(self, name: str = "yes-no") -> None:
        super().__init__(name)
        self._start = [
            (re.compile(_ANCHOR_PREFIX + w + r"(?![\w])", re.I), lab) for w, lab in self._WORDS
        ]
        self._word = re.compile(r"(?<![\w])(yes|no)(?![\w])", re.I)

    def input_text(self, ex: Example) -> str:
        """``"Question: ..."`` (after ``"Passage: ..."`` when the example has a passage)."""
        return _with_passage(ex, f"Question: {ex.question}")

    def instruction(self, *, cot: bool = False) -> str:
        """The yes/no instruction."""
        if cot:
            return (
                "Answer the question. Reason step by step, then end with "
                '"So the answer is yes." or "So the answer is no."'
            )
        return "Answer the question with yes or no."

    def answer_text(self, ex: Example) -> str:
        """``"yes"`` or ``"no"``."""
        return ex.label

    def candidates(self, ex: Example) -> list[str]:
        """``["yes", "no"]``."""
        return ["yes", "no"]

    def candidate_label(self, ex: Example, i: int) -> str:
        """``"yes"`` for 0, ``"no"`` for 1."""
        return ("yes", "no")[i]

    def normalize_label(self, value: Any, ex: Example | None = None) -> str:
        """Booleans, 1/0 and yes/no/true/false strings become ``"yes"``/``"no"``."""
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int) and value in (0, 1):
            return "yes" if value == 1 else "no"
        s = str(value).strip().lower()
        table = {"yes": "yes", "no": "no", "true": "yes", "false": "no", "1": "yes", "0": "no"}
        if s in table:
            return table[s]
        raise ValueError(f"label {value!r} is not yes or no")

    def _parse_clause(self, clause: str, ex: Example, *, anchored: bool) -> str | None:
        if anchored:
            stripped = clause.strip()
            for pat, lab in self._start:
                if pat.match(stripped):
                    return lab
        m = self._word.search(clause)
        return m.group(1).lower() if m else None


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[], Task]] = {
    "cqa": lambda: MultipleChoiceTask("cqa", num_choices=5),
    "svamp": lambda: MathTask("svamp"),
    "gsm8k": lambda: MathTask("gsm8k"),
    "esnli": lambda: NLITask("esnli", NLI_LABELS_3WAY),
    "anli1": lambda: NLITask("anli1", NLI_LABELS_3WAY),
    "rte": lambda: NLITask("rte", NLI_LABELS_2WAY),
    "multiple-choice": lambda: MultipleChoiceTask("multiple-choice"),
    "math": lambda: MathTask("math"),
    "nli": lambda: NLITask("nli", NLI_LABELS_3WAY),
    "nli2": lambda: NLITask("nli2", NLI_LABELS_2WAY),
    "yes-no": lambda: YesNoTask("yes-no"),
    "private-records": lambda: MathTask("private-records"),
}

#: Every name :func:`get_task` accepts.
TASK_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def get_task(name: str, *, answer_style: str | None = None) -> Task:
    """A fresh task by preset name (case-insensitive; ``_`` and ``-`` are interchangeable).

    ``answer_style`` (multiple-choice tasks): ``"letter"`` (default) or ``"text"``.
    Raises :class:`ConfigError` listing the valid names for an unknown name.
    """
    key = str(name).strip().lower().replace("_", "-")
    factory = _FACTORIES.get(key)
    if factory is None:
        raise ConfigError(
            f"unknown task {name!r}",
            hint=f"valid task names: {', '.join(TASK_NAMES)}",
        )
    task = factory()
    if answer_style is not None and isinstance(task, MultipleChoiceTask):
        return MultipleChoiceTask(task.name, task.num_choices, answer_style)
    return task
