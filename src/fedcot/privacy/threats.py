"""Attacks on annotated sensitive values, each scored against a candidate list.

For every annotated span of a threat type (person, place, org, condition, drug, date,
e-mail, phone, IBAN, card, ID, URL, number) the attacker gets a candidate list: the
original and ``candidates - 1`` other values of the same type drawn from the corpus, in
random order. Chance is 1 / (list size). An attack names one candidate (top-1); the rate at
which it names the original is compared with chance. The attacker sees the perturbed
prompt and knows the mechanism; what replaced the span is read off the client's records
(:attr:`~fedcot.privacy.perturb.UnitDraw.start`), i.e. the attacker is also told where the
span is, which a real server is not.

- **nearest neighbour**: the candidate whose sentence embedding (all-MiniLM-L6-v2) is
  nearest to what replaced the span;
- **Bayes**: argmax prior × likelihood. The prior is the public unigram frequency of the
  candidate's words; the likelihood is exact for the unit-level mechanisms (the product of
  the per-unit probabilities, zero when the unit counts differ), the metric-DP density for
  FedCoT-A numbers, and constant for FedCoT-A surrogates (they do not depend on the value,
  so the posterior is the prior);
- **seed replay**: the attacker assumes a seed (0 by default, the old default), substitutes
  each candidate into the prompt, re-runs the same mechanism with that seed, and names a
  candidate whose replay reproduces the observed output (the most probable one a priori if
  several do, the prior's choice if none does);
- **contextual**: a local language model reads the perturbed prompt and the candidate list
  and scores "the original was <candidate>" for each (log-likelihood), as the 2025
  LLM-reconstruction attacks do.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedcot.privacy.attacks import integer_part
from fedcot.privacy.frequency import unigram_logprob
from fedcot.privacy.mechanisms import parse_unit_number
from fedcot.privacy.surrogates import number_kind
from fedcot.privacy.units import split_units

__all__ = [
    "THREAT_TYPES",
    "Target",
    "ThreatRow",
    "build_targets",
    "contextual_attack",
    "replay_attack",
    "run_threats",
    "threat_table",
]

THREAT_TYPES: tuple[str, ...] = (
    "person", "place", "org", "condition", "drug", "date", "email", "phone", "iban", "card",
    "id", "url", "number",
)  # fmt: skip


@dataclass
class Target:
    """One annotated span to recover: text index, offsets, type, and its candidate list."""

    text_index: int
    start: int
    end: int
    type: str
    original: str
    candidates: list[str]

    @property
    def chance(self) -> float:
        return 1.0 / len(self.candidates)


@dataclass
class ThreatRow:
    """Top-1 recovery rates of one strategy against the candidate lists."""

    strategy: str
    epsilon: float
    seed: str
    decoys: str
    targets: int
    chance: float
    missed_words: float
    missed_numbers: float
    repeated_words: float
    same_numbers: float
    nn: float
    bayes: float
    replay: float | None = None
    contextual: float | None = None
    kept_words: float = 0.0
    units_per_second: float = 0.0
    by_type: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layout(kind: str, value: str) -> tuple[str, str]:
    """What FedCoT-A discloses about a value besides its type: the shape of its span
    (letters → a/A, digits → 9, word count and separators kept), and an organisation's kind
    word. Decoys of the same layout measure what leaks *beyond* that disclosure."""
    shape = re.sub(r"[^\W\d_]+", lambda m: "A" if m.group()[:1].isupper() else "a", value)
    shape = re.sub(r"\d", "9", shape)
    if kind == "org":
        return kind, shape + " " + value.split()[-1].lower() if value.split() else shape
    if kind == "number":
        return kind, ""  # metric DP: the magnitude is what is protected, not hidden
    return kind, shape


def build_targets(
    texts: Sequence[str],
    spans: Sequence[Sequence[tuple[int, int, str]]],
    candidates: int = 10,
    seed: int = 0,
    max_targets: int | None = None,
    same_layout: bool = False,
) -> list[Target]:
    """Candidate lists: each span's original plus values of the same type from other spans
    (with ``same_layout``, of the same :func:`layout` too; a value with no such decoy is
    left out)."""
    rng = random.Random(seed)
    pools: dict[Any, list[str]] = defaultdict(list)

    def key(k: str, v: str) -> Any:
        return layout(k, v) if same_layout else k

    for t, sp in zip(texts, spans):
        for s, e, k in sp:
            pool = pools[key(k, t[s:e])]
            if k in THREAT_TYPES and t[s:e].casefold() not in {v.casefold() for v in pool}:
                pool.append(t[s:e])
    out = []
    for i, (t, sp) in enumerate(zip(texts, spans)):
        for s, e, k in sp:
            if k not in THREAT_TYPES:
                continue
            original = t[s:e]
            others = [v for v in pools[key(k, original)] if v.casefold() != original.casefold()]
            if not others:
                continue
            picked = rng.sample(others, min(candidates - 1, len(others)))
            cands = [original, *picked]
            rng.shuffle(cands)
            out.append(Target(i, s, e, k, original, cands))
    if max_targets is not None and len(out) > max_targets:
        out = sorted(rng.sample(out, max_targets), key=lambda x: (x.text_index, x.start))
    return out


def observed(p: Any, target: Target) -> str:
    """What replaced the target span in perturbation ``p`` (its records' outputs)."""
    parts = [d.output for d in p.units if d.start < target.end and target.start < d.end]
    return " ".join(parts)


def _log_prior(text: str) -> float:
    words = [u.text for u in split_units(text) if u.kind == "word"]
    return sum(unigram_logprob(w) for w in words) / max(len(words), 1)


def _prior_pick(cands: Sequence[str]) -> str:
    return max(cands, key=_log_prior)


# -- nearest neighbour and Bayes ---------------------------------------------------------


def nn_attack(targets: Sequence[Target], outputs: Sequence[str], encoder: Any) -> list[str]:
    """The candidate whose sentence embedding is nearest to the observed replacement."""
    guesses = []
    for t, out in zip(targets, outputs):
        emb = encoder.encode([out or " ", *t.candidates])
        guesses.append(t.candidates[int(np.argmax(emb[1:] @ emb[0]))])
    return guesses


def bayes_attack(
    targets: Sequence[Target], outputs: Sequence[str], perturber: Any, sources: Sequence[str]
) -> list[str]:
    """argmax prior × likelihood (see the module docstring)."""
    guesses = []
    for t, out in zip(targets, outputs):
        scores = [
            _log_prior(c) + _log_likelihood(perturber, t, c, out, sources[t.text_index])
            for c in t.candidates
        ]
        guesses.append(t.candidates[int(np.argmax(scores))])
    return guesses


def _log_likelihood(perturber: Any, t: Target, cand: str, out: str, source: str) -> float:
    if perturber.strategy == "adaptive":
        if t.type != "number":
            return 0.0  # an independent surrogate: the same for every candidate
        return _number_likelihood(perturber, t, cand, out, source)
    cu = [u for u in split_units(cand) if u.private]
    ou = [u for u in split_units(out) if u.private]
    if len(cu) != len(ou):
        return -math.inf
    total = 0.0
    for c, o in zip(cu, ou):
        total += _unit_likelihood(perturber, c, o)
    return total


def _unit_likelihood(perturber: Any, c: Any, o: Any) -> float:
    if c.kind != o.kind:
        return -math.inf
    if c.kind == "word":
        mech = perturber.words
        space = mech.space
        y = space.index.get(space.key(o.text))
        if y is None:
            return -math.inf
        return float(mech.log_likelihood(y, space.vectors_for([c.text]), perturber.eps_s)[0])
    if c.kind == "number":
        outs, logp = perturber.numbers.distribution(c.text, perturber.eps_s)
        want = integer_part(o.text)
        hit = [lp for v, lp in zip(outs, logp) if int(v) == want]
        return float(hit[0]) if hit else -math.inf
    outs, logp = perturber.punctuation.distribution(c.text, perturber.eps_s)
    return float(dict(zip(outs, logp)).get(o.text, -math.inf))


def _number_likelihood(perturber: Any, t: Target, cand: str, out: str, source: str) -> float:
    try:
        x = parse_unit_number(cand)[0]
        y = parse_unit_number(out.split()[0])[0] if out else math.nan
    except ValueError:
        return 0.0
    kind = number_kind(source, t.start, t.end)
    mech = perturber._surrogate_maker().numbers
    grid = mech.grids[kind]
    j = int(np.argmin(np.abs(grid - y)))
    return float(mech.log_probs(kind, x, perturber.eps_s)[j])


# -- seed replay --------------------------------------------------------------------------


def replay_attack(
    targets: Sequence[Target],
    outputs: Sequence[str],
    sources: Sequence[str],
    make_perturber: Callable[[int], Any],
    assumed_seed: int = 0,
) -> list[str]:
    """Re-run the mechanism with ``assumed_seed`` on each candidate substitution.

    ``make_perturber(seed)`` builds the same mechanism as the client's (the server knows
    the algorithm); each prompt is assumed perturbed alone by a fresh perturber (one
    ``fedcot perturb`` call per prompt, as with the old default seed).
    """
    guesses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for t, out in zip(targets, outputs):
            src = sources[t.text_index]
            matches = []
            for c in t.candidates:
                text = src[: t.start] + c + src[t.end :]
                shifted = Target(t.text_index, t.start, t.start + len(c), t.type, c, t.candidates)
                p = make_perturber(assumed_seed).perturb([text])[0]
                if observed(p, shifted) == out:
                    matches.append(c)
            guesses.append(_prior_pick(matches) if matches else _prior_pick(t.candidates))
    return guesses


# -- contextual (LLM) ----------------------------------------------------------------------

_CONTEXT_PROMPT = (
    'In the message below, one {type} was replaced by a stand-in: "{stand_in}".\n'
    "Message: {text}\n"
    "Candidates for the original {type}: {candidates}.\n"
    "The original {type} was:"
)
_TYPE_WORDS = {"org": "organisation", "id": "identifier", "iban": "IBAN", "url": "web address"}


def contextual_attack(
    targets: Sequence[Target], outputs: Sequence[str], perturbed: Sequence[str], backend: Any
) -> list[str]:
    """A local LLM names the original from the perturbed prompt and the candidate list."""
    requests = []
    for t, out in zip(targets, outputs):
        kind = _TYPE_WORDS.get(t.type, t.type)
        prompt = _CONTEXT_PROMPT.format(
            type=kind,
            stand_in=out,
            text=perturbed[t.text_index][:1200],
            candidates=", ".join(t.candidates),
        )
        requests.extend((prompt, " " + c) for c in t.candidates)
    scores = backend.loglikelihood(requests)
    guesses = []
    k = 0
    for t in targets:
        n = len(t.candidates)
        guesses.append(t.candidates[int(np.argmax(scores[k : k + n]))])
        k += n
    return guesses


# -- the report ---------------------------------------------------------------------------


def _rate(targets: Sequence[Target], guesses: Sequence[str]) -> float:
    hits = [g.casefold() == t.original.casefold() for t, g in zip(targets, guesses)]
    return float(np.mean(hits)) if hits else float("nan")


def _verbatim(
    perts: Sequence[Any], sources: Sequence[str], spans: Sequence[Sequence[tuple[int, int, str]]]
) -> dict[str, float]:
    """How annotated units reach the server as they were, as shares of the annotated word
    (or number) units: ``missed_*``, no record replaced them (a detector miss);
    ``repeated_words``, replaced, but the same token is inside the stand-in (an
    organisation's kind word such as "Hospital", a URL's "https", a month name drawn again);
    ``same_numbers``, replaced by a draw that landed on the same value."""
    n = Counter()
    for p, src, sp in zip(perts, sources, spans):
        for s, e, _ in sp:
            for u in split_units(src[s:e]):
                if not ((u.kind == "word" and len(u.text) > 1) or u.kind == "number"):
                    continue
                kind = "words" if u.kind == "word" else "numbers"
                n[kind] += 1
                a, b = s + u.start, s + u.end
                rec = [d for d in p.units if d.start < b and a < d.end]
                if not rec:
                    n[f"missed_{kind}"] += 1
                elif u.text.casefold() in {
                    v.text.casefold() for d in rec for v in split_units(d.output)
                }:
                    n["repeated_words" if kind == "words" else "same_numbers"] += 1
    return {
        key: n[key] / max(n["words" if "word" in key else "numbers"], 1)
        for key in ("missed_words", "missed_numbers", "repeated_words", "same_numbers")
    }


def _kept_words(
    perts: Sequence[Any], sources: Sequence[str], spans: Sequence[Sequence[tuple[int, int, str]]]
) -> float:
    """Share of non-sensitive word units that reach the server unchanged."""
    total = kept = 0
    for p, src, sp in zip(perts, sources, spans):
        for u in split_units(src):
            if u.kind != "word" or any(s < u.end and u.start < e for s, e, _ in sp):
                continue
            total += 1
            rec = [d for d in p.units if d.start <= u.start < d.end]
            kept += not rec or rec[0].output == u.text
    return kept / total if total else float("nan")


def run_threats(
    strategy: str,
    epsilon: float,
    sources: Sequence[str],
    spans: Sequence[Sequence[tuple[int, int, str]]],
    make_perturber: Callable[[int | None], Any],
    *,
    encoder: Any,
    seed: int | None = None,
    candidates: int = 10,
    max_targets: int | None = 300,
    replay: bool = True,
    backend: Any = None,
    target_seed: int = 0,
    same_layout: bool = False,
) -> ThreatRow:
    """Perturb ``sources`` (normalised texts) one prompt per call and run every attack.

    ``make_perturber(seed)`` builds the strategy; ``seed`` is the client's (None: OS
    entropy, the default); the replay attacker always assumes seed 0.
    """
    import time

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        t0 = time.perf_counter()
        perts = [make_perturber(seed).perturb([s], [f"t{i}"])[0] for i, s in enumerate(sources)]
        secs = time.perf_counter() - t0
    n_units = sum(sum(u.private for u in split_units(s)) for s in sources)
    targets = build_targets(sources, spans, candidates, target_seed, max_targets, same_layout)
    outs = [observed(perts[t.text_index], t) for t in targets]
    probe = make_perturber(0)
    guesses: dict[str, list[str]] = {
        "nn": nn_attack(targets, outs, encoder),
        "bayes": bayes_attack(targets, outs, probe, sources),
    }
    if replay:
        guesses["replay"] = replay_attack(targets, outs, sources, make_perturber)
    if backend is not None:
        guesses["contextual"] = contextual_attack(targets, outs, [p.text for p in perts], backend)
    verbatim = _verbatim(perts, sources, spans)
    by_type: dict[str, dict[str, float]] = {}
    for kind in sorted({t.type for t in targets}):
        idx = [i for i, t in enumerate(targets) if t.type == kind]
        sub = [targets[i] for i in idx]
        by_type[kind] = {
            "targets": len(sub),
            "chance": float(np.mean([t.chance for t in sub])),
            **{a: _rate(sub, [g[i] for i in idx]) for a, g in guesses.items()},
        }
    return ThreatRow(
        strategy=strategy,
        epsilon=epsilon,
        seed="OS entropy" if seed is None else str(seed),
        decoys="same layout" if same_layout else "same type",
        targets=len(targets),
        chance=float(np.mean([t.chance for t in targets])) if targets else float("nan"),
        **verbatim,
        nn=_rate(targets, guesses["nn"]),
        bayes=_rate(targets, guesses["bayes"]),
        replay=_rate(targets, guesses["replay"]) if replay else None,
        contextual=_rate(targets, guesses["contextual"]) if backend is not None else None,
        kept_words=_kept_words(perts, sources, spans),
        units_per_second=n_units / secs if secs > 0 else math.inf,
        by_type=by_type,
    )


def threat_table(rows: Sequence[ThreatRow]) -> Any:
    """A rich table of :class:`ThreatRow` s (rates in %)."""
    from rich.table import Table

    table = Table(title="per-value attacks (top-1 against candidate lists)")
    for col in ("strategy", "ε", "randomness", "targets", "chance", "missed (w/n)", "NN",
                "Bayes", "replay", "contextual", "kept words", "units/s"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("strategy", "randomness") else "right")

    def pct(v: float | None) -> str:
        return "–" if v is None or math.isnan(v) else f"{100 * v:.1f}"

    for r in rows:
        table.add_row(
            r.strategy, f"{r.epsilon:g}", r.seed, str(r.targets), pct(r.chance),
            f"{pct(r.missed_words)} / {pct(r.missed_numbers)}", pct(r.nn), pct(r.bayes),
            pct(r.replay), pct(r.contextual), pct(r.kept_words), f"{r.units_per_second:,.0f}",
        )  # fmt: skip
    return table
