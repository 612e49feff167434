"""Privacy accounting: ε per unit class, draws, and the sequential-composition totals.

Each unit of a prompt is perturbed by an ε_i-LDP mechanism, so the prompt as a whole is
(Σ ε_i)-LDP by sequential composition (with the consistency option, repeated occurrences of
a unit share one draw and are charged once). Different prompts hold different records, so the
guarantee per record is its prompt's total; if one person's data spans several prompts, their
totals add up (``run_total``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ClassLedger:
    """Draws and ε spent on one unit class (word, number, punct; sensitive or not)."""

    draws: int = 0
    epsilon_sum: float = 0.0
    epsilon_max: float = 0.0

    def add(self, epsilon: float, draws: int) -> None:
        self.draws += draws
        self.epsilon_sum += epsilon * draws
        self.epsilon_max = max(self.epsilon_max, epsilon)


@dataclass
class PromptLedger:
    """What one prompt spent."""

    by_class: dict[str, ClassLedger] = field(default_factory=dict)

    @property
    def epsilon(self) -> float:
        return sum(c.epsilon_sum for c in self.by_class.values())

    @property
    def draws(self) -> int:
        return sum(c.draws for c in self.by_class.values())


class PrivacyAccountant:
    """Records every draw; totals per prompt, per class and per run; JSON round trip."""

    def __init__(self) -> None:
        self.prompts: dict[str, PromptLedger] = {}

    def charge(self, prompt_id: str, unit_class: str, epsilon: float, draws: int = 1) -> None:
        """Record ``draws`` draws of an ``epsilon``-LDP mechanism on ``unit_class`` units."""
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(f"cannot charge epsilon={epsilon}")
        ledger = self.prompts.setdefault(prompt_id, PromptLedger())
        ledger.by_class.setdefault(unit_class, ClassLedger()).add(epsilon, draws)

    def prompt_total(self, prompt_id: str) -> float:
        """Sequential-composition ε of one prompt (0 for an unknown prompt)."""
        p = self.prompts.get(prompt_id)
        return p.epsilon if p else 0.0

    def by_class(self) -> dict[str, ClassLedger]:
        """Draws and ε summed over all prompts, per unit class."""
        out: dict[str, ClassLedger] = defaultdict(ClassLedger)
        for p in self.prompts.values():
            for name, c in p.by_class.items():
                agg = out[name]
                agg.draws += c.draws
                agg.epsilon_sum += c.epsilon_sum
                agg.epsilon_max = max(agg.epsilon_max, c.epsilon_max)
        return dict(out)

    def summary(self) -> dict[str, Any]:
        """Totals for a run manifest."""
        totals = [p.epsilon for p in self.prompts.values()]
        return {
            "prompts": len(self.prompts),
            "draws": sum(p.draws for p in self.prompts.values()),
            "per_prompt_max": max(totals, default=0.0),
            "per_prompt_mean": sum(totals) / len(totals) if totals else 0.0,
            "run_total": sum(totals),
            "by_class": {k: vars(v) for k, v in sorted(self.by_class().items())},
            "composition": "sequential within a prompt; per record = its prompt's total",
        }

    def to_dict(self) -> dict[str, Any]:
        """Full ledger (summary plus every prompt)."""
        return {
            "summary": self.summary(),
            "prompts": {
                pid: {k: vars(c) for k, c in p.by_class.items()} for pid, p in self.prompts.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyAccountant:
        """Rebuild an accountant from :meth:`to_dict` output."""
        acc = cls()
        for pid, classes in data.get("prompts", {}).items():
            ledger = PromptLedger()
            for name, c in classes.items():
                ledger.by_class[name] = ClassLedger(
                    int(c["draws"]), float(c["epsilon_sum"]), float(c["epsilon_max"])
                )
            acc.prompts[pid] = ledger
        return acc

    def save(self, path: str | Path) -> Path:
        """Write the ledger as JSON."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2))
        return p
