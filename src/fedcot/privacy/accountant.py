"""The privacy ledger: what each prompt spent and what it disclosed, honestly labelled.

Four kinds of entries, never added up across kinds:

``ldp``
    draws of an ε-LDP mechanism (exponential mechanism over the whole candidate set, the
    numeric grid mechanism, randomised response on punctuation). Sequential composition
    holds: a prompt's ``epsilon`` is the sum over its ε-LDP draws.
``metric``
    metric-DP draws (FedCoT-A numbers): ε per unit of distance (10 years, a factor of 10).
    Their sum is a metric-DP guarantee in that unit, not an ε-LDP one.
``deniability``
    mechanisms that are not ε-LDP over the vocabulary: top-K (CusText-style; an output is
    one of about K neighbours of the input, and inputs outside that set are ruled out) and
    RANTEXT (reported with the ε of its publication, which is not a bound on this use).
    They are counted, never charged as ε.
``disclosed``
    surrogates drawn independently of the original value (FedCoT-A): the value costs
    nothing, the type (and the layout of the span) is disclosed; counted per type.

Different prompts hold different records, so the guarantee per record is its prompt's
entry; if one person's data spans several prompts, their entries add up (``run_total``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClassLedger", "PrivacyAccountant", "PromptLedger"]


@dataclass
class ClassLedger:
    """Draws and ε spent on one class of units."""

    draws: int = 0
    epsilon_sum: float = 0.0
    epsilon_max: float = 0.0

    def add(self, epsilon: float, draws: int) -> None:
        self.draws += draws
        self.epsilon_sum += epsilon * draws
        self.epsilon_max = max(self.epsilon_max, epsilon)

    def merge(self, other: ClassLedger) -> None:
        self.draws += other.draws
        self.epsilon_sum += other.epsilon_sum
        self.epsilon_max = max(self.epsilon_max, other.epsilon_max)


@dataclass
class PromptLedger:
    """What one prompt spent (ε-LDP, metric DP) and what it disclosed."""

    ldp: dict[str, ClassLedger] = field(default_factory=dict)
    metric: dict[str, ClassLedger] = field(default_factory=dict)
    metric_units: dict[str, str] = field(default_factory=dict)
    deniability: dict[str, dict[str, Any]] = field(default_factory=dict)
    disclosed: Counter = field(default_factory=Counter)

    @property
    def epsilon(self) -> float:
        """Sequential-composition ε over the prompt's ε-LDP draws only."""
        return sum(c.epsilon_sum for c in self.ldp.values())

    @property
    def draws(self) -> int:
        return (
            sum(c.draws for c in self.ldp.values())
            + sum(c.draws for c in self.metric.values())
            + sum(int(d["draws"]) for d in self.deniability.values())
            + sum(self.disclosed.values())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon_ldp": self.epsilon,
            "ldp": {k: vars(c) for k, c in sorted(self.ldp.items())},
            "metric": {
                k: {**vars(c), "per": self.metric_units.get(k, "")}
                for k, c in sorted(self.metric.items())
            },
            "deniability": {k: dict(v) for k, v in sorted(self.deniability.items())},
            "disclosed": dict(sorted(self.disclosed.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptLedger:
        led = cls()
        for k, c in data.get("ldp", {}).items():
            led.ldp[k] = ClassLedger(
                int(c["draws"]), float(c["epsilon_sum"]), float(c["epsilon_max"])
            )
        for k, c in data.get("metric", {}).items():
            led.metric[k] = ClassLedger(
                int(c["draws"]), float(c["epsilon_sum"]), float(c["epsilon_max"])
            )
            led.metric_units[k] = str(c.get("per", ""))
        led.deniability = {k: dict(v) for k, v in data.get("deniability", {}).items()}
        led.disclosed = Counter({k: int(v) for k, v in data.get("disclosed", {}).items()})
        return led


def _check(epsilon: float) -> None:
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"cannot charge epsilon={epsilon}")


class PrivacyAccountant:
    """Records every draw per prompt; totals per class and per run; a JSON round trip."""

    def __init__(self) -> None:
        self.prompts: dict[str, PromptLedger] = {}
        self.reproducible_seed: int | None = None

    def _prompt(self, prompt_id: str) -> PromptLedger:
        return self.prompts.setdefault(prompt_id, PromptLedger())

    def touch(self, prompt_id: str) -> None:
        """Record a prompt that spent nothing (so it is counted)."""
        self._prompt(prompt_id)

    def charge(self, prompt_id: str, unit_class: str, epsilon: float, draws: int = 1) -> None:
        """``draws`` draws of an ``epsilon``-LDP mechanism on ``unit_class`` units."""
        _check(epsilon)
        self._prompt(prompt_id).ldp.setdefault(unit_class, ClassLedger()).add(epsilon, draws)

    def charge_metric(self, prompt_id: str, kind: str, epsilon: float, per: str) -> None:
        """One metric-DP draw: ε per ``per`` (e.g. "10 years") on a number of ``kind``."""
        _check(epsilon)
        led = self._prompt(prompt_id)
        led.metric.setdefault(kind, ClassLedger()).add(epsilon, 1)
        led.metric_units[kind] = per

    def count_deniability(
        self, prompt_id: str, mechanism: str, draws: int = 1, **params: Any
    ) -> None:
        """Draws of a mechanism that is not ε-LDP (top-K: ``k=``; RANTEXT: ``epsilon=``)."""
        entry = self._prompt(prompt_id).deniability.setdefault(mechanism, {"draws": 0, **params})
        entry["draws"] += draws

    def disclose(self, prompt_id: str, entity_type: str, n: int = 1) -> None:
        """An independent surrogate: the value is hidden, its type disclosed."""
        self._prompt(prompt_id).disclosed[entity_type] += n

    def prompt_total(self, prompt_id: str) -> float:
        """Sequential-composition ε-LDP of one prompt (0 for an unknown prompt)."""
        p = self.prompts.get(prompt_id)
        return p.epsilon if p else 0.0

    def by_class(self) -> dict[str, ClassLedger]:
        """ε-LDP draws and ε summed over all prompts, per unit class."""
        out: dict[str, ClassLedger] = {}
        for p in self.prompts.values():
            for name, c in p.ldp.items():
                out.setdefault(name, ClassLedger()).merge(c)
        return out

    def summary(self) -> dict[str, Any]:
        """Totals for a run manifest (valid JSON: no infinities)."""
        totals = [p.epsilon for p in self.prompts.values()]
        metric: dict[str, dict[str, Any]] = {}
        deny: dict[str, dict[str, Any]] = {}
        disclosed: Counter = Counter()
        for p in self.prompts.values():
            for k, c in p.metric.items():
                m = metric.setdefault(k, {"draws": 0, "epsilon_sum": 0.0, "per": p.metric_units[k]})
                m["draws"] += c.draws
                m["epsilon_sum"] += c.epsilon_sum
            for k, d in p.deniability.items():
                e = deny.setdefault(k, {**d, "draws": 0})
                e["draws"] += d["draws"]
            disclosed.update(p.disclosed)
        return {
            "prompts": len(self.prompts),
            "draws": sum(p.draws for p in self.prompts.values()),
            "ldp_per_prompt_max": max(totals, default=0.0),
            "ldp_per_prompt_mean": sum(totals) / len(totals) if totals else 0.0,
            "ldp_run_total": sum(totals),
            "ldp_by_class": {k: vars(v) for k, v in sorted(self.by_class().items())},
            "metric_by_kind": dict(sorted(metric.items())),
            "deniability": dict(sorted(deny.items())),
            "disclosed_types": dict(sorted(disclosed.items())),
            "composition": "sequential within a prompt; per record = its prompt's entry",
            "randomness": (
                f"seed {self.reproducible_seed}: reproducible — not for private data"
                if self.reproducible_seed is not None
                else "OS entropy"
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        """Full ledger: the summary and every prompt's entry."""
        return {
            "summary": self.summary(),
            "prompts": {pid: p.to_dict() for pid, p in self.prompts.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyAccountant:
        """Rebuild an accountant from :meth:`to_dict` output."""
        acc = cls()
        for pid, entry in data.get("prompts", {}).items():
            acc.prompts[pid] = PromptLedger.from_dict(entry)
        return acc

    @classmethod
    def load(cls, path: str | Path) -> PrivacyAccountant:
        """Read a ledger written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the ledger as strict JSON (``extra`` keys are added at the top level)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data = {**self.to_dict(), **(extra or {})}
        p.write_text(
            json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False), encoding="utf-8"
        )
        return p
