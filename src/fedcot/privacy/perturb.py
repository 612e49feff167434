"""The one front door for text privatisation: :class:`Perturber`.

A prompt is split into units; every word, number and punctuation unit is replaced by a draw
from its class's mechanism (whitespace is kept as layout). Strategies:

- ``exponential``: FedCoT-E, the exponential mechanism over the whole candidate set;
- ``topk``: the same weights on each unit's K nearest candidates (CusText-style);
- ``rantext``: InferDPT's random-adjacency mechanism (comparison with FATE-LLM);
- ``adaptive``: FedCoT-A. A sensitivity detector marks units (PII patterns, numbers, proper
  nouns, rare words, user terms). Sensitive words go through the exponential mechanism over
  the whole candidate set at ε_S = ``epsilon`` (a formal ε_S-LDP guarantee where it
  matters); the other words through the ``base`` mechanism (top-K by default, for utility)
  at ε_N = ``epsilon_normal`` ≥ ε_S; an optional per-prompt budget scales both down.
- ``none``: identity (the non-private baseline, ε = ∞); nothing is charged.

With ``consistent`` (the default) each distinct unit of a prompt is drawn once, so a name
maps to the same stand-in everywhere in that prompt, and the private map original → stand-in
is returned to the caller (the FedCoT decoder uses it). It never leaves the client.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedcot.errors import ConfigError
from fedcot.privacy.accountant import PrivacyAccountant
from fedcot.privacy.mechanisms import (
    ExponentialMechanism,
    NumericMechanism,
    PunctuationMechanism,
    RantextMechanism,
    TopKMechanism,
    WordMechanism,
    check_epsilon,
)
from fedcot.privacy.space import EmbeddingSpace
from fedcot.privacy.units import Unit, apply_case, case_pattern, split_units

Strategy = Literal["exponential", "topk", "rantext", "adaptive", "none"]
STRATEGIES: tuple[str, ...] = ("exponential", "topk", "rantext", "adaptive", "none")


class Detector(Protocol):
    """Anything that marks units as sensitive (see :mod:`fedcot.privacy.sensitivity`)."""

    def detect(self, text: str, units: Sequence[Unit] | None = None) -> list[str | None]: ...


class PerturbConfig(BaseModel):
    """How prompts are privatised (the ``[privacy]`` table of a run config)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = "adaptive"
    epsilon: float = Field(3.0, description="ε per unit; for adaptive, ε_S of sensitive units")
    epsilon_normal: float | None = Field(
        None, description="adaptive only: ε_N of other units (default 3 × epsilon)"
    )
    base: Literal["exponential", "topk"] = Field(
        "topk", description="adaptive only: the mechanism of non-sensitive words"
    )
    top_k: int = Field(32, ge=2, le=100000)
    consistent: bool = True
    prompt_budget: float | None = Field(None, description="cap on a prompt's total ε")
    model: str = Field("smollm2-135m-instruct", description="embeddings of the word space")
    vocab: Literal["words", "all"] = "words"
    terms: list[str] = Field(default_factory=list, description="always-sensitive user terms")
    rare_zipf: float = Field(3.0, ge=0.0, le=8.0)
    seed: int = 0

    @field_validator("epsilon", "epsilon_normal", "prompt_budget")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is None:
            return v
        if math.isnan(v) or v <= 0:
            raise ValueError("must be a positive number")
        if math.isinf(v):
            raise ValueError("must be finite (use strategy = 'none' for no privacy)")
        return v

    @model_validator(mode="after")
    def _normal_at_least_sensitive(self) -> PerturbConfig:
        if self.epsilon_normal is not None and self.epsilon_normal < self.epsilon:
            raise ValueError("epsilon_normal must be >= epsilon (sensitive units get less ε)")
        return self

    @property
    def eps_sensitive(self) -> float:
        return self.epsilon

    @property
    def eps_normal(self) -> float:
        if self.strategy != "adaptive":
            return self.epsilon
        return self.epsilon_normal if self.epsilon_normal is not None else 3 * self.epsilon


@dataclass
class UnitDraw:
    """One unit of a prompt, what replaced it, and at what ε (private to the client)."""

    original: str
    output: str
    kind: str
    epsilon: float
    sensitive: str | None = None


@dataclass
class Perturbation:
    """A perturbed prompt with its private bookkeeping.

    ``text`` is what may leave the client; ``mapping`` (original → stand-in) and ``units``
    stay on it.
    """

    id: str
    original: str
    text: str
    units: list[UnitDraw] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    epsilon: float = 0.0

    @property
    def inverse(self) -> dict[str, str]:
        """Stand-in → original (the first original, when two share a stand-in)."""
        inv: dict[str, str] = {}
        for orig, stand_in in self.mapping.items():
            inv.setdefault(stand_in, orig)
        return inv

    def public(self) -> dict[str, Any]:
        """What may be written next to the perturbed text: id, text and ε, nothing else."""
        return {"id": self.id, "text": self.text, "epsilon": self.epsilon}


class Perturber:
    """Privatise prompts: ``perturb(texts)`` → one :class:`Perturbation` each.

    Build it with :meth:`from_config` (loads the embedding space of the client model) or
    directly from mechanisms (tests, custom spaces).
    """

    def __init__(
        self,
        words: WordMechanism | None,
        *,
        strategy: Strategy,
        sensitive_words: WordMechanism | None = None,
        epsilon: float,
        epsilon_normal: float | None = None,
        numbers: NumericMechanism | None = None,
        punctuation: PunctuationMechanism | None = None,
        detector: Detector | None = None,
        consistent: bool = True,
        prompt_budget: float | None = None,
        seed: int = 0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{strategy}'", hint=f"use one of {STRATEGIES}")
        self.strategy = strategy
        if strategy != "none":
            check_epsilon(epsilon)
            if words is None:
                raise ConfigError(f"strategy '{strategy}' needs a word mechanism")
        self.eps_s = float(epsilon)
        self.eps_n = float(epsilon_normal if epsilon_normal is not None else epsilon)
        if strategy == "adaptive":
            check_epsilon(self.eps_n, "epsilon_normal")
            if self.eps_n < self.eps_s:
                raise ConfigError("epsilon_normal must be >= epsilon for the adaptive strategy")
            if detector is None:
                raise ConfigError("the adaptive strategy needs a sensitivity detector")
        if prompt_budget is not None:
            check_epsilon(prompt_budget, "prompt_budget")
        self.words = words
        # Adaptive: sensitive words get their own mechanism (the full exponential one).
        self.sensitive_words = sensitive_words or words
        self.numbers = numbers or NumericMechanism()
        self.punctuation = punctuation or PunctuationMechanism()
        self.detector = detector
        self.consistent = consistent
        self.prompt_budget = prompt_budget
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.accountant = PrivacyAccountant()
        self._count = 0

    @classmethod
    def from_config(cls, cfg: PerturbConfig, space: EmbeddingSpace | None = None) -> Perturber:
        """Build the strategy a config names (loading the model's embedding space)."""
        if cfg.strategy == "none":
            return cls(None, strategy="none", epsilon=math.inf, seed=cfg.seed)
        space = space or EmbeddingSpace.from_model(cfg.model, vocab=cfg.vocab)
        kind = cfg.base if cfg.strategy == "adaptive" else cfg.strategy
        words: WordMechanism
        if kind == "exponential":
            words = ExponentialMechanism(space)
        elif kind == "topk":
            words = TopKMechanism(space, cfg.top_k)
        else:
            words = RantextMechanism(space)
        detector = None
        sensitive_words: WordMechanism | None = None
        if cfg.strategy == "adaptive":
            from fedcot.privacy.sensitivity import SensitivityDetector

            detector = SensitivityDetector(terms=tuple(cfg.terms), rare_zipf=cfg.rare_zipf)
            sensitive_words = words if kind == "exponential" else ExponentialMechanism(space)
        return cls(
            words,
            strategy=cfg.strategy,
            sensitive_words=sensitive_words,
            epsilon=cfg.eps_sensitive,
            epsilon_normal=cfg.eps_normal,
            detector=detector,
            consistent=cfg.consistent,
            prompt_budget=cfg.prompt_budget,
            seed=cfg.seed,
        )

    # -- the door ------------------------------------------------------------------------
    def perturb(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> list[Perturbation]:
        """Perturb a batch of prompts; every draw is charged to the accountant."""
        if isinstance(texts, str):
            raise TypeError("perturb() takes a list of texts; wrap a single text in a list")
        if ids is not None and len(ids) != len(texts):
            raise ValueError("ids and texts differ in length")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is {type(t).__name__}, not str")
            if not t.strip():
                raise ConfigError(
                    f"text {i} is empty", hint="drop empty prompts before perturbing them"
                )
        if ids is None:
            ids = [f"p{self._count + i}" for i in range(len(texts))]
        self._count += len(texts)
        if self.strategy == "none":
            return [Perturbation(pid, t, t, epsilon=math.inf) for pid, t in zip(ids, texts)]

        # 1. Units, their ε, and the draws needed (one per distinct unit when consistent).
        plans = [self._plan(pid, t) for pid, t in zip(ids, texts)]
        # 2. One batched call per unit class over every draw of the batch.
        outputs: dict[tuple[int, int], str] = {}
        routes = (
            ("word", False, self.words),
            ("word", True, self.sensitive_words),
            ("number", None, self.numbers),
            ("punct", None, self.punctuation),
        )
        for kind, sensitive, mech in routes:
            jobs = [
                (p, d)
                for p, plan in enumerate(plans)
                for d in plan.draws
                if d.kind == kind and (sensitive is None or bool(d.sensitive) == sensitive)
            ]
            if not jobs:
                continue
            drawn = mech.sample(  # type: ignore[union-attr]
                [d.key_text for _, d in jobs], np.array([d.epsilon for _, d in jobs]), self.rng
            )
            for (p, d), out in zip(jobs, drawn):
                outputs[(p, d.slot)] = out
        # 3. Re-assemble, charge, return.
        return [self._assemble(p, plan, outputs) for p, plan in enumerate(plans)]

    def perturb_one(self, text: str, pid: str | None = None) -> Perturbation:
        """Perturb a single prompt."""
        return self.perturb([text], None if pid is None else [pid])[0]

    # -- internals -----------------------------------------------------------------------
    def _plan(self, pid: str, text: str) -> _Plan:
        units = split_units(text)
        kinds: list[str | None] = [None] * len(units)
        if self.strategy == "adaptive":
            assert self.detector is not None
            kinds = self.detector.detect(text, units)
        eps = [self.eps_s if k is not None else self.eps_n for k in kinds]
        plan = _Plan(pid, text, units, kinds)
        slots: dict[tuple[str, str, float], int] = {}
        for i, u in enumerate(units):
            if not u.private:
                continue
            key_text = u.text.lower() if u.kind == "word" else u.text
            key = (u.kind, key_text, eps[i])
            if self.consistent and key in slots:
                plan.unit_slot[i] = slots[key]
                continue
            slot = len(plan.draws)
            slots[key] = slot
            plan.unit_slot[i] = slot
            plan.draws.append(_Draw(slot, u.kind, key_text, eps[i], kinds[i]))
        if self.prompt_budget is not None:
            total = sum(d.epsilon for d in plan.draws)
            if total > self.prompt_budget:
                scale = self.prompt_budget / total
                for d in plan.draws:
                    d.epsilon *= scale
        return plan

    def _assemble(self, p: int, plan: _Plan, outputs: dict[tuple[int, int], str]) -> Perturbation:
        pieces: list[str] = []
        records: list[UnitDraw] = []
        mapping: dict[str, str] = {}
        for i, u in enumerate(plan.units):
            if not u.private:
                pieces.append(u.text)
                continue
            d = plan.draws[plan.unit_slot[i]]
            out = outputs[(p, d.slot)]
            if u.kind == "word":
                out = apply_case(out, case_pattern(u.text))
            pieces.append(out)
            records.append(UnitDraw(u.text, out, u.kind, d.epsilon, d.sensitive))
            mapping.setdefault(u.text, out)
        classes: dict[str, list[_Draw]] = {}
        for d in plan.draws:
            name = d.kind + (":sensitive" if d.sensitive else "")
            classes.setdefault(name, []).append(d)
        for name, draws in classes.items():
            for d in draws:
                self.accountant.charge(plan.pid, name, d.epsilon)
        return Perturbation(
            id=plan.pid,
            original=plan.text,
            text="".join(pieces),
            units=records,
            mapping=mapping,
            epsilon=self.accountant.prompt_total(plan.pid),
        )


@dataclass
class _Draw:
    slot: int
    kind: str
    key_text: str
    epsilon: float
    sensitive: str | None


@dataclass
class _Plan:
    pid: str
    text: str
    units: list[Unit]
    kinds: list[str | None]
    draws: list[_Draw] = field(default_factory=list)
    unit_slot: dict[int, int] = field(default_factory=dict)
