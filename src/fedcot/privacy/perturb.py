"""The one front door for text privatisation: :class:`Perturber`.

A prompt is normalised (:func:`~fedcot.privacy.sensitivity.normalize`) and privatised by
one of these strategies:

- ``adaptive``: FedCoT-A. A detector (:class:`~fedcot.privacy.sensitivity.
  SensitivityDetector`, on Presidio) finds the sensitive entities and their types; each is
  replaced by a same-type surrogate drawn independently of its value
  (:mod:`fedcot.privacy.surrogates`; numbers through metric DP at ``epsilon`` per 10 years
  or per factor of 10). Non-sensitive text is kept (``base = "keep"``, the default: under
  utility-optimised LDP it needs no protection) or goes through the exponential or top-K
  mechanism at ε_N = ``epsilon_normal``.
- ``exponential``: FedCoT-E, the paper's exponential mechanism over the whole candidate set
  on every word, number and punctuation unit (ε-LDP per unit);
- ``topk``: the same weights on each unit's K nearest candidates (CusText-style; not ε-LDP);
- ``rantext``: InferDPT's random-adjacency mechanism (comparison with FATE-LLM);
- ``none``: identity (the non-private baseline); nothing is charged.

Randomness comes from the operating system unless a seed is given: a server that knows the
seed can replay the draws, so a seeded run is marked "reproducible — not for private data"
in its ledger and warns. With ``consistent`` (the default) each distinct unit of a prompt is
drawn once; the private map original → stand-in is returned to the caller (the FedCoT
decoder uses it) and never leaves the client.
"""

from __future__ import annotations

import copy
import math
import random
import warnings
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
from fedcot.privacy.sensitivity import SensitivityDetector, normalize
from fedcot.privacy.space import EmbeddingSpace
from fedcot.privacy.surrogates import DEFAULT_LOCALES, SurrogateMaker
from fedcot.privacy.units import Unit, apply_case, case_pattern, split_units

Strategy = Literal["exponential", "topk", "rantext", "adaptive", "none"]
STRATEGIES: tuple[str, ...] = ("exponential", "topk", "rantext", "adaptive", "none")

#: What a run with an explicit privacy seed is told (and its ledger says).
SEED_WARNING = (
    "privacy.seed is set: the mechanism draws are reproducible, and a server that guesses "
    "the seed can replay them and recover the private values. Use a seed for experiments "
    "only, never for private data (leave privacy.seed unset)."
)


class Detector(Protocol):
    """Anything that finds typed sensitive entities (see :mod:`fedcot.privacy.sensitivity`)."""

    def entities(self, text: str) -> list[Any]: ...


class PerturbConfig(BaseModel):
    """How prompts are privatised (the ``[privacy]`` table of a run config)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = "adaptive"
    epsilon: float = Field(
        3.0,
        description="ε per unit; adaptive: ε of the metric-DP numbers (per 10 years / factor 10)",
    )
    epsilon_normal: float | None = Field(
        None, description="adaptive with base exponential/topk: ε_N of other words (3 × epsilon)"
    )
    base: Literal["keep", "exponential", "topk"] = Field(
        "keep", description="adaptive only: what non-sensitive words get (kept by default)"
    )
    top_k: int = Field(32, ge=2, le=100000)
    consistent: bool = True
    prompt_budget: float | None = Field(None, description="cap on a prompt's ε-LDP total")
    model: str = Field("smollm2-135m-instruct", description="embeddings of the word space")
    vocab: Literal["words", "all"] = "words"
    terms: list[str] = Field(default_factory=list, description="always-sensitive user terms")
    rare_zipf: float = Field(2.5, ge=0.0, le=8.0)
    locales: list[str] = Field(
        default_factory=lambda: list(_default_locales()), description="Faker locales of the pools"
    )
    seed: int | None = Field(
        None, description="unset: OS entropy. A seed makes draws replayable (experiments only)"
    )

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
    def _normal_positive(self) -> PerturbConfig:
        if self.epsilon_normal is not None and self.strategy != "adaptive":
            raise ValueError("epsilon_normal applies to the adaptive strategy only")
        return self

    @property
    def eps_sensitive(self) -> float:
        return self.epsilon

    @property
    def eps_normal(self) -> float:
        if self.strategy != "adaptive":
            return self.epsilon
        return self.epsilon_normal if self.epsilon_normal is not None else 3 * self.epsilon


def _default_locales() -> tuple[str, ...]:
    return DEFAULT_LOCALES


@dataclass
class UnitDraw:
    """One unit or entity of a prompt, what replaced it, and at what ε (client-private).

    ``kind`` is the unit kind (word, number, punct) for the unit-level strategies and the
    entity type (person, date, …) for the adaptive one; ``sensitive`` is the entity type of
    a replaced entity. ``epsilon`` is the ε-LDP or metric-DP ε of the draw (0 for an
    independent surrogate).
    """

    original: str
    output: str
    kind: str
    epsilon: float
    sensitive: str | None = None
    start: int = -1  # offsets in the normalised source text
    end: int = -1


@dataclass
class Perturbation:
    """A perturbed prompt with its private bookkeeping.

    ``text`` is what may leave the client; ``original`` (as given), ``source`` (normalised:
    what was perturbed), ``mapping`` (original → stand-in) and ``units`` stay on it.
    ``epsilon`` is the prompt's ε-LDP total (∞ for the non-private strategy).
    """

    id: str
    original: str
    text: str
    units: list[UnitDraw] = field(default_factory=list)
    mapping: dict[str, str] = field(default_factory=dict)
    epsilon: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        if not self.source:
            self.source = self.original

    @property
    def inverse(self) -> dict[str, str]:
        """Stand-in → original (the first original, when two share a stand-in)."""
        inv: dict[str, str] = {}
        for orig, stand_in in self.mapping.items():
            inv.setdefault(stand_in, orig)
        return inv

    def public(self) -> dict[str, Any]:
        """What may be written next to the perturbed text: id, text and ε-LDP (strict JSON)."""
        eps = None if math.isinf(self.epsilon) else self.epsilon
        return {"id": self.id, "text": self.text, "epsilon": eps}


class Perturber:
    """Privatise prompts: ``perturb(texts)`` → one :class:`Perturbation` each.

    Build it with :meth:`from_config` (loads the embedding space where a word mechanism is
    needed, and the detector) or directly from mechanisms (tests, custom spaces).
    """

    def __init__(
        self,
        words: WordMechanism | None,
        *,
        strategy: Strategy,
        epsilon: float,
        epsilon_normal: float | None = None,
        numbers: NumericMechanism | None = None,
        punctuation: PunctuationMechanism | None = None,
        detector: Detector | None = None,
        consistent: bool = True,
        prompt_budget: float | None = None,
        seed: int | None = None,
        locales: Sequence[str] | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{strategy}'", hint=f"use one of {STRATEGIES}")
        self.strategy = strategy
        if strategy != "none":
            check_epsilon(epsilon)
            if words is None and strategy != "adaptive":
                raise ConfigError(f"strategy '{strategy}' needs a word mechanism")
        self.eps_s = float(epsilon)
        self.eps_n = float(epsilon_normal if epsilon_normal is not None else 3 * epsilon)
        if strategy == "adaptive":
            check_epsilon(self.eps_n, "epsilon_normal")
            if detector is None:
                raise ConfigError("the adaptive strategy needs a sensitivity detector")
        if prompt_budget is not None:
            check_epsilon(prompt_budget, "prompt_budget")
        self.words = words  # adaptive: the mechanism of non-sensitive words (None: kept)
        self.numbers = numbers or NumericMechanism()
        self.punctuation = punctuation or PunctuationMechanism()
        self.detector = detector
        self.consistent = consistent
        self.prompt_budget = prompt_budget
        self.seed = seed
        self.rng = np.random.default_rng(seed)  # seed None: 128 bits of OS entropy
        self.py_rng: random.Random = (
            random.Random(seed) if seed is not None else random.SystemRandom()
        )
        self.accountant = PrivacyAccountant()
        self.accountant.reproducible_seed = seed
        if seed is not None and strategy != "none":
            warnings.warn(SEED_WARNING, UserWarning, stacklevel=2)
        self._surrogates: Any = None
        self._locales = tuple(locales) if locales else None
        self._count = 0

    def with_seed(self, seed: int | None) -> Perturber:
        """The same mechanism (detector, spaces, settings) with fresh randomness and ledger.

        ``None`` draws from OS entropy; an int makes the draws replayable (experiments).
        """
        new = copy.copy(self)
        new.seed = seed
        new.rng = np.random.default_rng(seed)
        new.py_rng = random.Random(seed) if seed is not None else random.SystemRandom()
        new.accountant = PrivacyAccountant()
        new.accountant.reproducible_seed = seed
        new._surrogates = None
        new._count = 0
        if seed is not None and self.strategy != "none":
            warnings.warn(SEED_WARNING, UserWarning, stacklevel=2)
        return new

    @classmethod
    def from_config(cls, cfg: PerturbConfig, space: EmbeddingSpace | None = None) -> Perturber:
        """Build the strategy a config names (loading the model's embedding space if needed)."""
        if cfg.strategy == "none":
            return cls(None, strategy="none", epsilon=math.inf, seed=cfg.seed)
        kind = cfg.base if cfg.strategy == "adaptive" else cfg.strategy
        words: WordMechanism | None = None
        if kind != "keep":
            space = space or EmbeddingSpace.from_model(cfg.model, vocab=cfg.vocab)
            if kind == "exponential":
                words = ExponentialMechanism(space)
            elif kind == "topk":
                words = TopKMechanism(space, cfg.top_k)
            else:
                words = RantextMechanism(space)
        detector = None
        if cfg.strategy == "adaptive":
            detector = SensitivityDetector(terms=tuple(cfg.terms), rare_zipf=cfg.rare_zipf)
        return cls(
            words,
            strategy=cfg.strategy,
            epsilon=cfg.eps_sensitive,
            epsilon_normal=cfg.eps_normal,
            detector=detector,
            consistent=cfg.consistent,
            prompt_budget=cfg.prompt_budget,
            seed=cfg.seed,
            locales=cfg.locales,
        )

    # -- the door ------------------------------------------------------------------------
    def perturb(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> list[Perturbation]:
        """Perturb a batch of prompts; every draw is recorded in the accountant."""
        if isinstance(texts, str):
            raise TypeError("perturb() takes a list of texts; wrap a single text in a list")
        if ids is not None and len(ids) != len(texts):
            raise ValueError("ids and texts differ in length")
        for i, t in enumerate(texts):
            label = ids[i] if ids is not None else f"text {i}"
            if not isinstance(t, str):
                raise TypeError(f"{label} is {type(t).__name__}, not str")
            if not t.strip():
                raise ConfigError(f"{label} is empty", hint="drop empty prompts before perturbing")
        if ids is None:
            ids = [f"p{self._count + i}" for i in range(len(texts))]
        self._count += len(texts)
        if self.strategy == "none":
            return [Perturbation(pid, t, t, epsilon=math.inf) for pid, t in zip(ids, texts)]
        sources = [normalize(t) for t in texts]
        if self.strategy == "adaptive":
            out = self._adaptive(ids, sources)
        else:
            plans = [
                self._plan(pid, t, [None] * len(split_units(t))) for pid, t in zip(ids, sources)
            ]
            outputs = self._draw_units(plans)
            out = [self._assemble(p, plan, outputs) for p, plan in enumerate(plans)]
        for p, raw in zip(out, texts):
            p.original = raw
        return out

    def perturb_one(self, text: str, pid: str | None = None) -> Perturbation:
        """Perturb a single prompt."""
        return self.perturb([text], None if pid is None else [pid])[0]

    # -- FedCoT-A ------------------------------------------------------------------------
    def _surrogate_maker(self) -> Any:
        if self._surrogates is None:
            self._surrogates = SurrogateMaker(
                self.py_rng, self.rng, self.eps_s, self._locales or DEFAULT_LOCALES
            )
        return self._surrogates

    def _adaptive(self, ids: Sequence[str], sources: Sequence[str]) -> list[Perturbation]:
        assert self.detector is not None
        maker = self._surrogate_maker()
        entities = [self.detector.entities(t) for t in sources]
        # Non-sensitive words (outside every entity) through the base mechanism, if any.
        plans = []
        for pid, text, ents in zip(ids, sources, entities):
            units = split_units(text)
            inside = _inside_mask(units, ents)
            keep_all = self.words is None
            mask = [None if (keep_all or inside[i] or u.kind != "word") else "normal"
                    for i, u in enumerate(units)]  # fmt: skip
            plans.append(self._plan(pid, text, mask, only_marked=True))
        outputs = self._draw_units(plans)
        return [
            self._assemble_adaptive(p, plan, ents, maker, outputs)
            for p, (plan, ents) in enumerate(zip(plans, entities))
        ]

    def _assemble_adaptive(
        self,
        p: int,
        plan: _Plan,
        ents: Sequence[Any],
        maker: Any,
        outputs: dict[tuple[int, int], str],
    ) -> Perturbation:
        text = plan.text
        prompt = maker.for_prompt()
        surrogates = prompt.draw_all(text, ents)
        pieces: list[str] = []
        records: list[UnitDraw] = []
        mapping: dict[str, str] = {}
        pos = 0
        units_by_start = {u.start: i for i, u in enumerate(plan.units)}
        for e, sur in zip(ents, surrogates):
            pieces.append(
                self._normal_text(p, plan, pos, e.start, units_by_start, outputs, records, mapping)
            )
            pieces.append(sur.text)
            records.append(UnitDraw(e.text, sur.text, e.type, sur.epsilon, e.type, e.start, e.end))
            mapping.setdefault(e.text, sur.text)
            self._charge_surrogate(plan.pid, sur)
            pos = e.end
        pieces.append(
            self._normal_text(p, plan, pos, len(text), units_by_start, outputs, records, mapping)
        )
        # The parts of surrogate names, so "Berg" alone decodes to "Brennan" (never sent).
        for part, stand_in in prompt.name_parts.items():
            records.append(UnitDraw(part, stand_in, "name-part", 0.0, "person"))
        self._charge_units(plan)
        self.accountant.touch(plan.pid)
        return Perturbation(
            id=plan.pid,
            original=text,
            text="".join(pieces),
            units=records,
            mapping=mapping,
            epsilon=self.accountant.prompt_total(plan.pid),
            source=text,
        )

    def _normal_text(
        self,
        p: int,
        plan: _Plan,
        start: int,
        end: int,
        units_by_start: dict[int, int],
        outputs: dict[tuple[int, int], str],
        records: list[UnitDraw],
        mapping: dict[str, str],
    ) -> str:
        """Text between entities: kept, or its words replaced by the base mechanism."""
        if self.words is None or start >= end:
            return plan.text[start:end]
        pieces = []
        pos = start
        while pos < end:
            i = units_by_start.get(pos)
            u = plan.units[i] if i is not None else None
            if u is None or i not in plan.unit_slot or u.end > end:
                nxt = min([s for s in units_by_start if pos < s <= end] + [end])
                pieces.append(plan.text[pos:nxt])
                pos = nxt
                continue
            d = plan.draws[plan.unit_slot[i]]
            out = apply_case(outputs[(p, d.slot)], case_pattern(u.text))
            pieces.append(out)
            records.append(UnitDraw(u.text, out, u.kind, d.epsilon, None, u.start, u.end))
            mapping.setdefault(u.text, out)
            pos = u.end
        return "".join(pieces)

    def _charge_surrogate(self, pid: str, sur: Any) -> None:
        if sur.metric_unit is None:
            self.accountant.disclose(pid, sur.type)
        elif sur.epsilon > 0:
            self.accountant.charge_metric(pid, sur.number_kind, sur.epsilon, sur.metric_unit)
        else:
            self.accountant.disclose(pid, f"number:{sur.number_kind} (repeat)")

    # -- unit-level strategies -----------------------------------------------------------
    def _draw_units(self, plans: Sequence[_Plan]) -> dict[tuple[int, int], str]:
        """One batched call per unit class over every draw of the batch."""
        outputs: dict[tuple[int, int], str] = {}
        routes = (("word", self.words), ("number", self.numbers), ("punct", self.punctuation))
        for kind, mech in routes:
            jobs = [(p, d) for p, plan in enumerate(plans) for d in plan.draws if d.kind == kind]
            if not jobs:
                continue
            drawn = mech.sample(  # type: ignore[union-attr]
                [d.key_text for _, d in jobs], np.array([d.epsilon for _, d in jobs]), self.rng
            )
            for (p, d), out in zip(jobs, drawn):
                outputs[(p, d.slot)] = out
        return outputs

    def _plan(
        self, pid: str, text: str, marks: list[str | None], only_marked: bool = False
    ) -> _Plan:
        units = split_units(text)
        eps = self.eps_n if self.strategy == "adaptive" else self.eps_s
        plan = _Plan(pid, text, units)
        slots: dict[tuple[str, str], int] = {}
        for i, u in enumerate(units):
            if not u.private or (only_marked and marks[i] is None):
                continue
            key_text = u.text.lower() if u.kind == "word" else u.text
            key = (u.kind, key_text)
            if self.consistent and key in slots:
                plan.unit_slot[i] = slots[key]
                continue
            slot = len(plan.draws)
            slots[key] = slot
            plan.unit_slot[i] = slot
            plan.draws.append(_Draw(slot, u.kind, key_text, eps))
        if self.prompt_budget is not None:
            total = sum(d.epsilon for d in plan.draws if self._is_ldp(d.kind))
            if total > self.prompt_budget:
                scale = self.prompt_budget / total
                for d in plan.draws:
                    d.epsilon *= scale
        return plan

    def _is_ldp(self, kind: str) -> bool:
        """Whether draws of this unit kind come from an ε-LDP mechanism."""
        return kind != "word" or isinstance(self.words, ExponentialMechanism)

    def _charge_units(self, plan: _Plan) -> None:
        for d in plan.draws:
            if self._is_ldp(d.kind):
                self.accountant.charge(plan.pid, d.kind, d.epsilon)
            elif isinstance(self.words, TopKMechanism):
                self.accountant.count_deniability(plan.pid, "topk", k=self.words.k)
            else:
                self.accountant.count_deniability(
                    plan.pid, "rantext", epsilon_as_published=d.epsilon
                )

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
            records.append(UnitDraw(u.text, out, u.kind, d.epsilon, None, u.start, u.end))
            mapping.setdefault(u.text, out)
        self._charge_units(plan)
        self.accountant.touch(plan.pid)
        return Perturbation(
            id=plan.pid,
            original=plan.text,
            text="".join(pieces),
            units=records,
            mapping=mapping,
            epsilon=self.accountant.prompt_total(plan.pid),
            source=plan.text,
        )


def _inside_mask(units: Sequence[Unit], ents: Sequence[Any]) -> list[bool]:
    out = []
    k = 0
    for u in units:
        while k < len(ents) and ents[k].end <= u.start:
            k += 1
        out.append(k < len(ents) and ents[k].start < u.end)
    return out


@dataclass
class _Draw:
    slot: int
    kind: str
    key_text: str
    epsilon: float


@dataclass
class _Plan:
    pid: str
    text: str
    units: list[Unit]
    draws: list[_Draw] = field(default_factory=list)
    unit_slot: dict[int, int] = field(default_factory=dict)
