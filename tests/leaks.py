"""Leak-check helpers shared by the privacy tests of the pipeline and the server."""

from __future__ import annotations

from typing import Any


def sensitive_units(record: Any) -> set[str]:
    """The words and numbers (2+ characters) inside a generated record's sensitive spans."""
    from fedcot.privacy.units import split_units

    out = set()
    for sp in record.meta["spans"]:
        for u in split_units(sp["text"]):
            if u.kind in ("word", "number") and len(u.text) >= 2:
                out.add(u.text)
    return out
