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
from typing import Any, Literal, Protocol

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
    """
    matches = list(_CONCLUSION_RE.finditer(text))
    if not matches:
        return text.strip(), ""
    m = matches[-1]
    return text[: m.start()].strip(), text[m.start() :].strip()


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


def inverse_map(text: str, perturbation: Perturbation) -> str:
    """Replace every stand-in in ``text`` by the original it stood for, in one pass.

    Stand-ins are whole entities (FedCoT-A: "Anna Berg", "+31 6 …"), the parts of a
    surrogate name ("Berg" alone → "Brennan"), and single words and numbers (the unit-level
    strategies). Longer stand-ins win; words match case-insensitively on word boundaries and
    take the casing of their occurrence; numbers match exactly. A stand-in that two
    originals share maps back to the first one (the client cannot tell them apart either).
    """
    words: dict[str, str] = {}
    exact: dict[str, str] = {}
    for d in perturbation.units:
        if d.output == d.original or not d.output.strip():
            continue
        if d.kind == "number" or d.output.replace(",", "").replace(".", "").isdigit():
            exact.setdefault(d.output, d.original)
        elif d.kind != "punct":
            words.setdefault(d.output.casefold(), d.original)
    if not words and not exact:
        return text
    alternatives = [re.escape(w) for w in sorted(words, key=len, reverse=True)]
    numbers = [re.escape(n) for n in sorted(exact, key=len, reverse=True)]
    parts = []
    if alternatives:
        parts.append(r"(?P<w>(?<![\w])(?:" + "|".join(alternatives) + r")(?![\w]))")
    if numbers:
        parts.append(r"(?P<n>(?<![\d.,])(?:" + "|".join(numbers) + r")(?![\d]|[.,]\d))")
    pattern = re.compile("|".join(parts), re.I)

    def back(m: re.Match[str]) -> str:
        if m.group("n") if numbers else None:
            return exact.get(m.group(), m.group())
        found = m.group()
        original = words[found.casefold()]
        if " " in original or not original.isalpha():
            return original  # a whole entity comes back as it was written
        return apply_case(original, case_pattern(found))

    return pattern.sub(back, text)


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
