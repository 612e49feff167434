"""Rationale decoders: turn the server's rationale for a perturbed example into one for the
client's original example.

- ``inverse-map``: substitute every stand-in the mechanism drew back by the original unit it
  replaced (the private map never left the client). Exact for names, places and numbers that
  the server repeats; it cannot repair reasoning that depended on a stand-in's meaning.
- ``icl``: the client's own model rewrites the rationale for the original question, given
  both (InferDPT-style extraction, done locally).
- ``trained``: the PDSS encoder-decoder model (``cot/encoder_decoder.py``) decodes.
- ``identity``: keep the rationale as it is (the non-private baseline needs nothing else).

Every decoder returns the rationale *body*: the server's concluding "So the answer is ..."
sentence is split off (:func:`split_conclusion`) so that training targets end with the gold
answer, and the server's own conclusion is kept for the optional agreement filter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from itertools import count
from typing import Any, Literal, Protocol

from fedcot.data.arithmetic import NUMBER_RE, arithmetic_steps, parse_number, reexecute
from fedcot.data.tasks import COT_ANSWER_PREFIX, Example
from fedcot.errors import ConfigError
from fedcot.models.backends.base import Backend, GenerationParams
from fedcot.privacy.perturb import Perturbation
from fedcot.privacy.units import apply_case, case_pattern

__all__ = [
    "DECODERS",
    "DecodeItem",
    "Decoder",
    "ICLDecoder",
    "IdentityDecoder",
    "InverseMapDecoder",
    "TrainedDecoder",
    "inverse_map",
    "make_decoder",
    "split_conclusion",
]

DecoderName = Literal["inverse-map", "icl", "trained", "identity"]
DECODERS: tuple[str, ...] = ("inverse-map", "icl", "trained", "identity")

_CONCLUSION_RE = re.compile(r"\b(?:so\s+)?the\s+(?:final\s+)?answer\s+is\b", re.I)


def split_conclusion(text: str) -> tuple[str, str]:
    """``"<body> So the answer is (c) x."`` → (``"<body>"``, ``"So the answer is (c) x."``).

    The split is at the last "the answer is" marker; without one the whole text is the body.
    Arithmetic the server wrote inside its conclusion ("So the answer is 12 + 30 = 42.") is
    reasoning, and is kept at the end of the body as well.
    """
    matches = list(_CONCLUSION_RE.finditer(text))
    if not matches:
        return text.strip(), ""
    m = matches[-1]
    body, conclusion = text[: m.start()].strip(), text[m.start() :].strip()
    steps = " ".join(step.text + "." for step in arithmetic_steps(conclusion))
    return (f"{body} {steps}".strip() if steps else body), conclusion


@dataclass
class DecodeItem:
    """One server answer to decode, with what the client knows about its example."""

    example: Example
    original_text: str  # the example as the client wrote it (task.input_text)
    perturbed_text: str  # the example as the server received it
    rationale: str  # the server's answer, as received
    perturbation: Perturbation | None = None  # the private stand-in map (mechanism strategies)


class Decoder(Protocol):
    """Anything that decodes a batch of server answers (returns full texts, conclusion kept)."""

    name: str

    def decode(self, items: Sequence[DecodeItem]) -> list[str]: ...


@lru_cache(maxsize=1)
def _common_words() -> frozenset[str]:
    """The language's most frequent words: the server's own words, never decoded alone."""
    from wordfreq import top_n_list

    return frozenset(w for w in top_n_list("en", _COMMON_WORDS) if w.isalpha())


_COMMON_WORDS = 150
_SEPARATOR = "\n\ue000\n"  # private-use: never in a rationale, never a number boundary


def _is_number(text: str) -> bool:
    return parse_number(text) is not None and NUMBER_RE.fullmatch(text.strip()) is not None


def _literal_table(perturbation: Perturbation) -> dict[str, str]:
    """Stand-in (case-folded) → original, for the stand-ins that can be told from the
    server's own words.

    A replaced entity (a surrogate name, phone, e-mail …) always decodes; a common word
    decodes only where it is written exactly as the stand-in was ("May", not "may"). A
    unit-level word swap decodes unless the stand-in is one of the language's common words or
    also occurs unchanged in the prompt: "the" stood in for "there" cannot be told from the
    server's own "the".
    """
    common = _common_words()
    kept = {d.original.casefold() for d in perturbation.units if d.output == d.original}
    table: dict[str, str] = {}
    for d in perturbation.units:
        out = d.output.strip()
        if d.output == d.original or not out or d.kind == "punct" or _is_number(out):
            continue
        key = out.casefold()
        if d.sensitive is None and (key in common or key in kept):
            continue
        if d.sensitive is not None and key in common:
            key = out  # matched case-sensitively below
        table.setdefault(key, d.original)
    return table


def _number_table(perturbation: Perturbation) -> dict[Decimal, list[Decimal]]:
    """Stand-in value → the original values written as it, in the order of the prompt.

    Two originals when the mechanism drew the same stand-in for two different numbers, or
    drew for one number the value another kept ("7 and 7" for "20 and 7")."""
    table: dict[Decimal, list[Decimal]] = {}
    for d in perturbation.units:
        if not (_is_number(d.output) and _is_number(d.original)):
            continue
        out, orig = parse_number(d.output), parse_number(d.original)
        assert out is not None and orig is not None
        originals = table.setdefault(out.value, [])
        if orig.value not in originals:
            originals.append(orig.value)
    return {v: o for v, o in table.items() if o != [v]}


def _split_shared_stand_ins(
    text: str, table: dict[Decimal, list[Decimal]]
) -> tuple[str, dict[Decimal, Decimal]]:
    """``text`` and a one-to-one substitution table for :func:`reexecute`.

    A stand-in shared by several originals is decoded in turn: its k-th mention in the text
    stands for the (k mod n)-th original in prompt order (servers restate a question's
    numbers in its order). Each mention gets a placeholder value of its own, absent from
    the text, so that the steps using it are redone on the right original. A guess where the
    server mentions them in another order; the only one that can be right at all where the
    first original always won. From the first step whose result is the stand-in's value
    ("0 + 0 = 0") on, its mentions are that result's, left to :func:`reexecute`.
    """
    shared = {v: o for v, o in table.items() if len(o) > 1}
    single = {v: o[0] for v, o in table.items() if len(o) == 1}
    if not shared:
        return text, single
    seen = {t.value for m in NUMBER_RE.finditer(text) if (t := parse_number(m.group()))}
    fresh = (v for v in map(Decimal, count(900_000_001)) if v not in seen and v not in single)
    counts: dict[Decimal, int] = {}
    result_at: dict[Decimal, int] = {}
    for step in reversed(arithmetic_steps(text)):
        result_at[step.result] = step.result_start

    def placeholder(m: re.Match[str]) -> str:
        tok = parse_number(m.group())
        if (
            tok is None
            or tok.value not in shared
            or m.start() >= result_at.get(tok.value, len(text))
        ):
            return m.group()
        k = counts[tok.value] = counts.get(tok.value, -1) + 1
        value = next(fresh)
        single[value] = shared[tok.value][k % len(shared[tok.value])]
        return tok.format(value, cap=0)

    return NUMBER_RE.sub(placeholder, text), single


def _replace_literals(text: str, table: dict[str, str]) -> str:
    if not table:
        return text
    alternatives = "|".join(re.escape(w) for w in sorted(table, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w])(?:" + alternatives + r")(?![\w])", re.I)

    def back(m: re.Match[str]) -> str:
        found = m.group()
        original = table.get(found) or table.get(found.casefold())
        if original is None:  # a common word written in another case: the server's own
            return found
        if " " in original or not original.isalpha():
            return original  # a whole entity comes back as it was written
        return apply_case(original, case_pattern(found))

    return pattern.sub(back, text)


def inverse_map(text: str, perturbation: Perturbation) -> str:
    """The server's rationale about the perturbed prompt, rewritten for the original one.

    1. The concluding "So the answer is" sentence is split off; its marker is never changed.
    2. Stand-ins that can be told from the server's own words (:func:`_literal_table`) are
       replaced by their originals, longest first, in one pass, keeping their casing.
    3. Numbers: stand-in values are mapped back and every arithmetic step that used one is
       re-executed with the original values (:func:`fedcot.data.arithmetic.reexecute`), so the
       results and the stated answer follow. A stand-in drawn for two different numbers is
       decoded in turn, in prompt order (:func:`_split_shared_stand_ins`).
    No other word of the server's text changes.
    """
    table = _literal_table(perturbation)
    markers = list(_CONCLUSION_RE.finditer(text))
    cut = markers[-1] if markers else None
    body = text[: cut.start()] if cut else text
    answer = text[cut.end() :] if cut else ""
    parts = [_replace_literals(body, table), _replace_literals(answer, table)]
    # The numbers are redone across body and answer together; the marker stays outside.
    joined, numbers = _split_shared_stand_ins(
        parts[0] + _SEPARATOR + parts[1], _number_table(perturbation)
    )
    joined = reexecute(joined, numbers)
    new_body, new_answer = joined.split(_SEPARATOR, 1)
    return new_body + cut.group() + new_answer if cut else new_body


class IdentityDecoder:
    """Keep the server's rationale unchanged."""

    name = "identity"

    def decode(self, items: Sequence[DecodeItem]) -> list[str]:
        return [it.rationale for it in items]


class InverseMapDecoder:
    """Substitute the private map back (see :func:`inverse_map`)."""

    name = "inverse-map"

    def decode(self, items: Sequence[DecodeItem]) -> list[str]:
        out = []
        for it in items:
            if it.perturbation is None:
                raise ConfigError(
                    "the inverse-map decoder needs the stand-in map of a mechanism strategy",
                    hint="use decoder = 'trained' (encoder-decoder) or 'identity' (none)",
                )
            out.append(inverse_map(it.rationale, it.perturbation))
        return out


ICL_INSTRUCTION = (
    "Below is a question, a reworded version of it, and reasoning written for the reworded "
    "version. Rewrite the reasoning so that it is about the original question. Keep the "
    "steps; replace names, numbers and other details by those of the original question. "
    f'End with "{COT_ANSWER_PREFIX} <answer>."'
)


class ICLDecoder:
    """The client's model rewrites each rationale for the original question."""

    name = "icl"

    def __init__(self, backend: Backend, *, max_new_tokens: int = 128) -> None:
        self.backend = backend
        self.params = GenerationParams(max_new_tokens=max_new_tokens, stop=("\n\n",))

    def prompt(self, it: DecodeItem) -> Any:
        body = (
            f"{ICL_INSTRUCTION}\n\nOriginal question:\n{it.original_text}\n\n"
            f"Reworded question:\n{it.perturbed_text}\n\n"
            f"Reasoning for the reworded question:\n{it.rationale.strip()}"
        )
        if self.backend.supports_chat:
            return [{"role": "user", "content": body}]
        return body + "\n\nReasoning for the original question:"

    def decode(self, items: Sequence[DecodeItem]) -> list[str]:
        if not items:
            return []
        completions = self.backend.generate([self.prompt(it) for it in items], self.params)
        return [c.text.strip() for c in completions]


class TrainedDecoder:
    """Decode with the trained PDSS encoder-decoder model."""

    name = "trained"

    def __init__(self, model: Any) -> None:
        self.model = model  # a fedcot.cot.encoder_decoder.EncoderDecoder

    def decode(self, items: Sequence[DecodeItem]) -> list[str]:
        if not items:
            return []
        return list(
            self.model.decode(
                [it.perturbed_text for it in items],
                [it.rationale for it in items],
                [it.original_text for it in items],
            )
        )


def make_decoder(
    name: str, *, student: Backend | None = None, encoder_decoder: Any = None
) -> Decoder:
    """Build a decoder by name; ``icl`` needs the client's model, ``trained`` the
    encoder-decoder."""
    if name == "identity":
        return IdentityDecoder()
    if name == "inverse-map":
        return InverseMapDecoder()
    if name == "icl":
        if student is None:
            raise ConfigError("the icl decoder needs the client's model")
        return ICLDecoder(student)
    if name == "trained":
        if encoder_decoder is None:
            raise ConfigError(
                "the trained decoder needs the encoder-decoder model",
                hint="use it with strategy = 'encoder-decoder'",
            )
        return TrainedDecoder(encoder_decoder)
    raise ConfigError(f"unknown decoder '{name}'", hint=f"use one of: {', '.join(DECODERS)}")
