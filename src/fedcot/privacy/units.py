"""Split text into units (words, numbers, punctuation, whitespace) that re-assemble exactly.

Every word, number and punctuation unit goes through a privacy mechanism; whitespace is the
layout between them. ``"".join(u.text for u in split_units(s)) == s`` for every string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

UnitKind = Literal["word", "number", "punct", "space"]

# Order matters: numbers before words so "2025" is a number; a number may carry thousands
# separators and one decimal part ("1,250.75"); a word is letters with inner apostrophes or
# hyphens ("o'neil", "e-mail"). Anything else is one punctuation character.
_UNIT_RE = re.compile(
    r"(?P<number>\d+(?:[.,]\d+)*)"
    r"|(?P<word>[^\W\d_]+(?:['’\-][^\W\d_]+)*)"
    r"|(?P<space>\s+)"
    r"|(?P<punct>.)",
    re.S,
)


@dataclass(frozen=True)
class Unit:
    """One piece of a text: its characters, kind and offsets in the original string."""

    text: str
    kind: UnitKind
    start: int
    end: int

    @property
    def private(self) -> bool:
        """Whether the unit goes through a mechanism (everything but whitespace)."""
        return self.kind != "space"


def split_units(text: str) -> list[Unit]:
    """Split ``text`` into units that re-assemble to exactly ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    units = []
    for m in _UNIT_RE.finditer(text):
        kind = m.lastgroup
        assert kind is not None
        units.append(Unit(m.group(), kind, m.start(), m.end()))  # type: ignore[arg-type]
    return units


def join_units(units: Iterable[Unit | str]) -> str:
    """Re-assemble units (or replacement strings) into text."""
    return "".join(u if isinstance(u, str) else u.text for u in units)


CasePattern = Literal["lower", "title", "upper", "other"]


def case_pattern(word: str) -> CasePattern:
    """The capitalisation of a word, to carry over to its stand-in."""
    if word.islower() or not any(c.isalpha() for c in word):
        return "lower"
    if word.isupper() and len(word) > 1:
        return "upper"
    if word[:1].isupper() and (len(word) == 1 or word[1:].islower()):
        return "title"
    return "other"


def apply_case(word: str, pattern: CasePattern) -> str:
    """Give ``word`` the capitalisation ``pattern`` ("other" keeps it as it is)."""
    if pattern == "upper":
        return word.upper()
    if pattern == "title":
        return word[:1].upper() + word[1:].lower()
    if pattern == "lower":
        return word.lower()
    return word
