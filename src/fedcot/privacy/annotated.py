"""Annotated texts and detector recall.

An annotated set is JSONL, one text a line, either with inline marks (``"marked"``:
``"Patient {{person:Lars Brennan}}, aged {{number:66}}"``) or with ``"text"`` and
``"spans"`` (``[{start, end, kind, text}]``). :func:`detector_recall` measures, per
annotated type, the share of annotated units (words and numbers) that the detector flags as
sensitive of any type (unit recall: what privacy depends on) and of the same type (type
accuracy: what surrogate quality depends on); :func:`flag_rate` the share of units of
ordinary text that it flags (the false-positive rate on CQA or e-SNLI questions).

Texts are normalised (:func:`~fedcot.privacy.sensitivity.normalize`) and spans moved with
them, exactly as the perturber sees them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcot.errors import DataError
from fedcot.privacy.sensitivity import SensitivityDetector, normalize_with_offsets
from fedcot.privacy.units import split_units

__all__ = [
    "AnnotatedText",
    "RecallReport",
    "detector_recall",
    "flag_rate",
    "load_annotated",
    "parse_marked",
]

_MARK = re.compile(r"\{\{([a-z_]+):(.*?)\}\}", re.S)

#: Annotation kinds of the generated private records (data/synthetic.py) → entity types.
SYNTHETIC_KINDS = {"name": "person", "age": "number", "amount": "number", "city": "place"}


@dataclass
class AnnotatedText:
    """A normalised text and its annotated ``(start, end, kind)`` spans."""

    id: str
    text: str
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    genre: str = ""


def parse_marked(marked: str) -> tuple[str, list[tuple[int, int, str]]]:
    """``"Hi {{person:Ann}}"`` → ("Hi Ann", [(3, 6, "person")])."""
    text: list[str] = []
    spans: list[tuple[int, int, str]] = []
    pos = 0
    last = 0
    for m in _MARK.finditer(marked):
        text.append(marked[last : m.start()])
        pos += m.start() - last
        value = m.group(2)
        spans.append((pos, pos + len(value), m.group(1)))
        text.append(value)
        pos += len(value)
        last = m.end()
    text.append(marked[last:])
    out = "".join(text)
    if "{{" in out or "}}" in out:
        raise DataError(f"unbalanced marks in {marked[:60]!r}")
    return out, spans


def _normalised(
    id_: str, raw: str, spans: Sequence[tuple[int, int, str]], genre: str
) -> AnnotatedText:
    text, offsets = normalize_with_offsets(raw)
    moved = [(offsets[s], offsets[e], SYNTHETIC_KINDS.get(k, k)) for s, e, k in spans]
    return AnnotatedText(id_, text, [s for s in moved if s[1] > s[0]], genre)


def load_annotated(path: str | Path) -> list[AnnotatedText]:
    """Read an annotated JSONL file (marked or span form)."""
    p = Path(path)
    out = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}, line {lineno}: invalid JSON ({e.msg})") from e
        rid = str(row.get("id", f"line{lineno}"))
        if "marked" in row:
            text, spans = parse_marked(row["marked"])
        else:
            text = row["text"]
            spans = [(int(s["start"]), int(s["end"]), s["kind"]) for s in row.get("spans", [])]
        out.append(_normalised(rid, text, spans, row.get("genre", "")))
    return out


def from_records(
    texts: Sequence[str], spans: Sequence[Sequence[dict[str, Any]]]
) -> list[AnnotatedText]:
    """Annotated texts from ``(text, [{start, end, kind}])`` pairs (the generated records)."""
    return [
        _normalised(f"r{i}", t, [(s["start"], s["end"], s["kind"]) for s in sp], "synthetic")
        for i, (t, sp) in enumerate(zip(texts, spans))
    ]


@dataclass
class RecallReport:
    """Per annotated type: units, units flagged (any type), units flagged with that type."""

    units: Counter = field(default_factory=Counter)
    flagged: Counter = field(default_factory=Counter)
    typed: Counter = field(default_factory=Counter)
    missed: list[tuple[str, str, str]] = field(default_factory=list)  # (id, kind, unit)

    def recall(self, kind: str | None = None) -> float:
        """Unit recall of one type, or overall."""
        n = self.units[kind] if kind else sum(self.units.values())
        k = self.flagged[kind] if kind else sum(self.flagged.values())
        return k / n if n else float("nan")

    def type_accuracy(self, kind: str | None = None) -> float:
        n = self.units[kind] if kind else sum(self.units.values())
        k = self.typed[kind] if kind else sum(self.typed.values())
        return k / n if n else float("nan")

    def to_dict(self) -> dict[str, Any]:
        kinds = sorted(self.units)
        return {
            "overall": {"units": sum(self.units.values()), "recall": self.recall(),
                        "type_accuracy": self.type_accuracy()},
            "by_type": {
                k: {"units": self.units[k], "recall": self.recall(k),
                    "type_accuracy": self.type_accuracy(k)}
                for k in kinds
            },
        }  # fmt: skip


_SAME = {"name": {"person", "place", "org"}, "drug": {"drug"}, "card": {"card"}}


def _same_type(annotated: str, found: str | None) -> bool:
    if found is None:
        return False
    return found == annotated or (found == "name" and annotated in _SAME["name"])


def detector_recall(detector: SensitivityDetector, items: Iterable[AnnotatedText]) -> RecallReport:
    """Unit recall per annotated type (see the module docstring)."""
    rep = RecallReport()
    for item in items:
        units = split_units(item.text)
        kinds = detector.detect(item.text, units)
        for u, k in zip(units, kinds):
            if u.kind not in ("word", "number"):
                continue
            ann = next((t for s, e, t in item.spans if s < u.end and u.start < e), None)
            if ann is None:
                continue
            rep.units[ann] += 1
            if k is not None:
                rep.flagged[ann] += 1
            else:
                rep.missed.append((item.id, ann, u.text))
            if _same_type(ann, k):
                rep.typed[ann] += 1
    return rep


def flag_rate(detector: SensitivityDetector, texts: Iterable[str]) -> tuple[float, Counter]:
    """Share of word and number units of ``texts`` flagged, and the flagged types."""
    n = 0
    types: Counter = Counter()
    for text in texts:
        units = split_units(text)
        for u, k in zip(units, detector.detect(text, units)):
            if u.kind in ("word", "number"):
                n += 1
                if k is not None:
                    types[k] += 1
    return (sum(types.values()) / n if n else float("nan")), types
