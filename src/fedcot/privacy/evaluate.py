"""Measure privacy against utility: mechanisms × ε on a corpus, attacked and scored.

:func:`privacy_grid` perturbs every text with each mechanism at each ε and reports per
cell (a :class:`PrivacyRow`):

privacy
    ``verbatim_spans``: share of annotated private spans (names, e-mails, IBANs, ...) whose
    exact text still appears in the perturbed prompt; ``nn_recovery_*`` and
    ``bayes_recovery_*``: share of units the nearest-neighbour and the Bayes (MAP) attacker
    of :mod:`fedcot.privacy.attacks` recover, over all attacked units and over the
    sensitive ones. Attacked units are words (hypotheses: every candidate of the space ∪ the
    corpus's original words) and numbers (hypotheses: the corpus's number originals,
    compared on their integer part); the Bayes attack runs on a seeded, stratified
    sub-sample of at most ``attack_units`` units to bound its time.
utility
    ``similarity``: mean cosine of all-MiniLM-L6-v2 sentence embeddings of original and
    perturbed text; ``token_change_rate``: mean share of private units replaced.
cost
    ``epsilon_per_prompt``: the accountant's mean sequential-composition ε per prompt;
    ``units_per_second``: perturbation throughput.

Sensitive units are the same for every mechanism: the units the default
:class:`~fedcot.privacy.sensitivity.SensitivityDetector` flags on the original texts, plus,
where spans are given, every unit inside an annotated span. Each attack targets the word
mechanism that actually drew the unit, at the unit's own ε (``UnitDraw.epsilon``): for the
adaptive strategy, words its detector flagged went through ``Perturber.sensitive_words``
at ε_S and the others through the base mechanism at ε_N. This is an attacker who knows the
mechanism and the ε of every unit (stronger than a real server, which does not see which
units the client's detector flagged).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcot.data import TASK_NAMES, generate_private_records, get_task, load_dataset
from fedcot.data.loaders import read_text_rows
from fedcot.errors import ConfigError, DataError
from fedcot.privacy.annotated import parse_marked
from fedcot.privacy.attacks import (
    HypothesisSet,
    bayes_inversion,
    bayes_inversion_numbers,
    integer_part,
    nearest_neighbour_inversion,
    nearest_number_inversion,
    verbatim_leakage,
)
from fedcot.privacy.mechanisms import check_epsilon
from fedcot.privacy.perturb import PerturbConfig, Perturber
from fedcot.privacy.sensitivity import SensitivityDetector, normalize_with_offsets
from fedcot.privacy.space import EmbeddingSpace
from fedcot.privacy.units import split_units
from fedcot.privacy.utility import get_encoder, token_change_rate
from fedcot.progress import progress_bar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from fedcot.privacy.utility import SentenceEncoder

__all__ = [
    "MECHANISMS",
    "PrivacyRow",
    "load_space_and_encoder",
    "load_texts",
    "parse_epsilons",
    "plot_frontier",
    "privacy_grid",
    "report_rows",
    "rows_to_table",
    "save_json",
]

#: The strategies :func:`privacy_grid` evaluates.
MECHANISMS: tuple[str, ...] = ("exponential", "topk", "rantext", "adaptive")

_ATTACKED = ("word", "number")


@dataclass
class PrivacyRow:
    """One (mechanism, ε) cell of the grid. Rates are in [0, 1]; ``None`` where undefined.

    ``n_units`` and ``n_sensitive_units`` count the attacked units (word and number units,
    every occurrence); ``n_attacked`` is the size of the Bayes attack's sub-sample.
    ``seconds`` is the whole cell (perturbation, attacks, similarity).
    """

    dataset: str
    mechanism: str
    epsilon: float
    n_texts: int
    n_units: int
    n_sensitive_units: int
    verbatim_spans: float | None
    nn_recovery_all: float | None
    nn_recovery_sensitive: float | None
    bayes_recovery_all: float | None
    bayes_recovery_sensitive: float | None
    similarity: float
    token_change_rate: float
    epsilon_per_prompt: float
    units_per_second: float
    seconds: float
    n_attacked: int = 0
    n_hypotheses: int = 0
    perturb_seconds: float = 0.0
    attack_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


# -- inputs ------------------------------------------------------------------------------


def parse_epsilons(text: str | Sequence[float]) -> list[float]:
    """ε values from ``"0.5,1,2"`` (or a sequence); each must be a finite number > 0."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[float] = []
    for raw in items:
        if isinstance(raw, str) and not raw.strip():
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"ε value {str(raw).strip()!r} is not a number",
                hint="give a comma-separated list of positive numbers, e.g. 0.5,1,3",
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(
                f"ε value {str(raw).strip()!r} is invalid: ε must be a finite number > 0",
                hint="give a comma-separated list of positive numbers, e.g. 0.5,1,3",
            )
        out.append(value)
    if not out:
        raise ConfigError("no ε values given", hint="e.g. --eps 0.5,1,3")
    return list(dict.fromkeys(out))


def parse_mechanisms(text: str | Sequence[str]) -> list[str]:
    """Mechanism names from ``"topk,adaptive"`` (or a sequence), checked."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [m.strip().lower() for m in items if m.strip()]
    bad = [m for m in out if m not in MECHANISMS]
    if bad:
        raise ConfigError(
            f"unknown mechanism {bad[0]!r}", hint=f"choose from {', '.join(MECHANISMS)}"
        )
    if not out:
        raise ConfigError("no mechanisms given", hint=f"choose from {', '.join(MECHANISMS)}")
    return list(dict.fromkeys(out))


def _datasets_root() -> Path:
    env = os.environ.get("FEDCOT_SHARED_DATASETS")
    if env:
        return Path(env)
    here = Path("../shared/datasets")
    if here.is_dir():
        return here
    # A source checkout: <repo>/src/fedcot/privacy/evaluate.py → <repo>/../shared/datasets.
    return Path(__file__).resolve().parents[4] / "shared" / "datasets"


def load_texts(
    data: str, limit: int | None = 200, seed: int = 0
) -> tuple[list[str], list[list[dict[str, Any]]] | None, str]:
    """Texts (and annotated spans, where known) to evaluate: (texts, spans, dataset name).

    ``data`` is ``"pii"`` (synthetic private records with every private span annotated),
    a task name such as ``"cqa"`` (its test questions under ``../shared/datasets`` or
    ``$FEDCOT_SHARED_DATASETS``), a ``.jsonl`` file (``"text"`` or ``"question"`` per row,
    optional ``"spans"`` as ``[{start, end, text, kind}]``) or a ``.txt`` file (one text a
    line).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    key = data.strip()
    if key.lower() == "pii":
        records = generate_private_records(limit or 200, seed)
        return [r.question for r in records], [list(r.meta["spans"]) for r in records], "pii"
    path = Path(key).expanduser()
    if path.suffix.lower() in (".jsonl", ".txt") or path.is_file():
        return _load_file(path, limit)
    if key.lower().replace("_", "-") not in TASK_NAMES:
        raise DataError(
            f"unknown data source {data!r}",
            hint="use 'pii', 'cqa' (or another task name) or a .jsonl/.txt file",
        )
    root = _datasets_root()
    if not root.is_dir():
        raise DataError(
            f"shared datasets not found at {root}",
            hint="run from the repository root or set FEDCOT_SHARED_DATASETS",
        )
    task = get_task(key)
    examples = load_dataset(root, task, "test", limit=limit, rationales=False)
    texts = [f"{e.premise}\n{e.question}" if e.premise else e.question for e in examples]
    return [t for t in texts if t.strip()], None, task.name


def _load_file(
    path: Path, limit: int | None
) -> tuple[list[str], list[list[dict[str, Any]]] | None, str]:
    texts: list[str] = []
    spans: list[list[dict[str, Any]]] = []
    any_spans = False
    for lineno, row in read_text_rows(path):
        if limit is not None and len(texts) >= limit:
            break
        if isinstance(row, str):
            texts.append(row)
            spans.append([])
            continue
        if "marked" in row:  # inline marks: {{kind:value}}
            marked, found = parse_marked(str(row["marked"]))
            row = {"text": marked, "spans": [
                {"start": a, "end": b, "kind": k, "text": marked[a:b]} for a, b, k in found
            ]}  # fmt: skip
        text = row.get("text", row.get("question"))
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{path}, line {lineno}: no non-empty 'text' field",
                hint='each line needs {"text": "...", "spans": [...]} (spans optional)',
            )
        row_spans = row.get("spans") or []
        if not isinstance(row_spans, list):
            raise DataError(f"{path}, line {lineno}: 'spans' must be a list")
        for sp in row_spans:
            if not _valid_span(sp, text):
                raise DataError(
                    f"{path}, line {lineno}: span {sp!r} does not match the text",
                    hint="a span is {start, end, text} with text == text[start:end]",
                )
        any_spans = any_spans or bool(row_spans)
        texts.append(text)
        spans.append(list(row_spans))
    if not texts:
        raise DataError(f"{path}: no texts found")
    return texts, (spans if any_spans else None), path.stem


def _valid_span(sp: Any, text: str) -> bool:
    if not isinstance(sp, dict) or not isinstance(sp.get("text"), str):
        return False
    start, end = sp.get("start"), sp.get("end")
    if start is None and end is None:
        return sp["text"] in text
    return (
        isinstance(start, int)
        and isinstance(end, int)
        and 0 <= start <= end <= len(text)
        and text[start:end] == sp["text"]
    )


# -- the grid ----------------------------------------------------------------------------


@dataclass
class _Corpus:
    """The attacked units of all texts, flattened, with their sensitivity."""

    texts: list[str]
    spans: list[list[dict[str, Any]]] | None
    n_private: list[int]  # private units per text
    where: list[tuple[int, int]]  # attacked unit → (text, private-unit position)
    starts: list[int]  # attacked unit → its offset in its text
    original: list[str]
    kind: list[str]
    sensitive: np.ndarray

    @classmethod
    def build(cls, texts: Sequence[str], spans: Sequence[Sequence[dict]] | None) -> _Corpus:
        detector = SensitivityDetector()
        n_private, where, original, kind, sensitive, starts = [], [], [], [], [], []
        for t, text in enumerate(texts):
            units = split_units(text)
            flags = detector.detect(text, units)
            ranges = []
            if spans is not None:
                ranges = [(int(s["start"]), int(s["end"])) for s in spans[t] if "start" in s]
            p = 0
            for u, flag in zip(units, flags):
                if not u.private:
                    continue
                if u.kind in _ATTACKED:
                    in_span = any(u.start < e and s < u.end for s, e in ranges)
                    where.append((t, p))
                    starts.append(u.start)
                    original.append(u.text)
                    kind.append(u.kind)
                    sensitive.append(flag is not None or in_span)
                p += 1
            n_private.append(p)
        return cls(
            list(texts),
            [list(s) for s in spans] if spans is not None else None,
            n_private,
            where,
            starts,
            original,
            kind,
            np.array(sensitive, dtype=bool),
        )

    def sample(self, n: int, seed: int) -> np.ndarray:
        """At most ``n`` unit indices, stratified by sensitivity (proportional), sorted."""
        total = len(self.original)
        if total <= n:
            return np.arange(total)
        rng = np.random.default_rng(seed)
        sens = np.flatnonzero(self.sensitive)
        rest = np.flatnonzero(~self.sensitive)
        n_sens = round(n * len(sens) / total)
        pick = [rng.choice(sens, n_sens, replace=False), rng.choice(rest, n - n_sens, False)]
        return np.sort(np.concatenate(pick))


def privacy_grid(
    texts: Sequence[str],
    spans: Sequence[list[dict]] | None,
    mechanisms: Sequence[str],
    epsilons: Sequence[float],
    *,
    space: EmbeddingSpace | None = None,
    top_k: int = 32,
    epsilon_normal_factor: float = 3.0,
    seed: int = 0,
    dataset: str = "custom",
    progress: bool = True,
    attack_units: int = 3000,
    max_hypotheses: int | None = None,
    encoder: SentenceEncoder | None = None,
) -> list[PrivacyRow]:
    """Perturb ``texts`` with each mechanism at each ε and measure privacy and utility.

    ``spans`` (one list per text, or ``None``) annotate private spans as
    ``{start, end, text}``; they feed ``verbatim_spans`` and the sensitive units. The
    adaptive strategy uses ε_S = ε and ε_N = ``epsilon_normal_factor`` · ε. ``space``
    defaults to SmolLM2's word space; ``max_hypotheses`` optionally cuts the attacker's
    candidate list to the most frequent words (plus all corpus originals) for speed;
    ``encoder`` defaults to the shared all-MiniLM-L6-v2 encoder.
    """
    texts = list(texts)
    if not texts:
        raise ConfigError("no texts to evaluate", hint="check the data source and --limit")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ConfigError(f"text {i} is empty or not a string")
    if spans is not None and len(spans) != len(texts):
        raise ValueError("spans and texts differ in length")
    mechs = parse_mechanisms(mechanisms)
    eps_list = [float(e) for e in epsilons]
    if not eps_list:
        raise ConfigError("no ε values given", hint="e.g. --eps 0.5,1,3")
    for e in eps_list:
        check_epsilon(e)
    if not epsilon_normal_factor >= 1.0:
        raise ConfigError(
            f"epsilon_normal_factor must be >= 1 (got {epsilon_normal_factor})",
            hint="non-sensitive units never get less ε than sensitive ones",
        )
    if attack_units < 1:
        raise ConfigError(f"attack_units must be >= 1 (got {attack_units})")

    if space is None:
        space = EmbeddingSpace.from_model()
    if encoder is None:
        encoder = get_encoder()

    texts, spans = normalise_corpus(texts, spans)
    corpus = _Corpus.build(texts, spans)
    words = [o for o, k in zip(corpus.original, corpus.kind) if k == "word"]
    numbers = list(dict.fromkeys(o for o, k in zip(corpus.original, corpus.kind) if k == "number"))
    hyps = HypothesisSet.for_corpus(space, words, max_hypotheses=max_hypotheses)
    sample = corpus.sample(attack_units, seed)
    original_emb = encoder.encode(texts)

    cells = [(m, e) for m in mechs for e in eps_list]
    rows: list[PrivacyRow] = []
    ctx = progress_bar(len(cells), f"privacy-eval {dataset}") if progress else _no_bar()
    with ctx as advance:
        for m, e in cells:
            rows.append(
                _cell(
                    corpus, m, e, space, hyps, numbers, sample, original_emb, encoder,
                    top_k=top_k, factor=epsilon_normal_factor, seed=seed, dataset=dataset,
                )
            )  # fmt: skip
            advance(1)
    return rows


def load_space_and_encoder(console: Console) -> tuple[EmbeddingSpace, SentenceEncoder]:
    """The attackers' word space and the utility sentence encoder, loaded.

    Prints the number of candidates and the seconds the two took to ``console``.
    """
    t0 = time.perf_counter()
    space = EmbeddingSpace.from_model()
    encoder = get_encoder()
    loaded = time.perf_counter() - t0
    console.print(f"space: {len(space):,} candidates; models loaded in {loaded:.1f} s")
    return space, encoder


def report_rows(rows: Sequence[PrivacyRow], out_dir: Path, console: Console) -> None:
    """Print the rows' table, write ``rows.json`` and ``frontier.png`` under ``out_dir``.

    The table goes to ``console`` when it is a terminal, else to a 160 columns wide one
    (stdout); then the paths of the two files are printed to ``console``.
    """
    table = rows_to_table(rows)
    if console.is_terminal:
        console.print(table)
    else:  # piped or captured: no terminal to wrap for, so print the table at full width
        from rich.console import Console

        Console(width=160).print(table)
    json_path = save_json(rows, out_dir / "rows.json")
    png_path = plot_frontier(rows, out_dir / "frontier.png")
    console.print(f"rows: {json_path}\nfrontier: {png_path}")


class _no_bar:
    def __enter__(self) -> Any:
        return lambda n: None

    def __exit__(self, *exc: object) -> None:
        return None


def _cell_perturber(
    mechanism: str, eps: float, space: EmbeddingSpace, *, top_k: int, factor: float, seed: int
) -> Perturber:
    """The seeded perturber of one cell (adaptive: ε_S = ``eps``, ε_N = ``factor`` · ``eps``)."""
    cfg = PerturbConfig(
        strategy=mechanism,  # type: ignore[arg-type]
        epsilon=eps,
        epsilon_normal=factor * eps if mechanism == "adaptive" else None,
        top_k=top_k,
        seed=seed,
    )
    with warnings.catch_warnings():  # an experiment: seeded on purpose, and recorded
        warnings.simplefilter("ignore", UserWarning)
        return Perturber.from_config(cfg, space)


def _unit_draws(corpus: _Corpus, perts: Sequence[Any]) -> list[Any]:
    """The perturbation record of every attacked unit of the corpus, in corpus order."""
    draws_all = [_record_at(perts[t], corpus.starts[j]) for j, (t, _) in enumerate(corpus.where)]
    draws = [d for d in draws_all if d is not None]
    if len(draws) != len(draws_all):  # pragma: no cover - unit-level strategies record all
        raise RuntimeError("perturbation records do not line up with the units")
    return draws


def _nearest_neighbour_guesses(
    space: EmbeddingSpace,
    hyps: HypothesisSet,
    numbers: list[str],
    outputs: list[str],
    kinds: list[str],
) -> list[str]:
    """The nearest-neighbour attacker's guess of every unit (words and numbers apart)."""
    is_word = np.array([k == "word" for k in kinds], dtype=bool)
    nn_guess: list[str] = [""] * len(outputs)
    w_idx = np.flatnonzero(is_word)
    n_idx = np.flatnonzero(~is_word)
    for j, g in zip(w_idx, nearest_neighbour_inversion(space, [outputs[j] for j in w_idx], hyps)):
        nn_guess[j] = g
    if len(n_idx):
        guesses = nearest_number_inversion([outputs[j] for j in n_idx], numbers)
        for j, g in zip(n_idx, guesses):
            nn_guess[j] = g
    return nn_guess


def _bayes_guesses(
    perturber: Perturber,
    draws: list[Any],
    outputs: list[str],
    kinds: list[str],
    sample: np.ndarray,
    hyps: HypothesisSet,
    numbers: list[str],
    seed: int,
) -> dict[int, str]:
    """The Bayes attacker's guess of every unit of ``sample`` (index into ``draws``).

    Grouped by the mechanism and ε each unit was drawn with (the adaptive strategy routes
    words its detector flags to their own mechanism); groups run in sorted order.
    """
    groups: dict[tuple[str, float], list[int]] = defaultdict(list)
    for j in sample:
        groups[(kinds[j], draws[j].epsilon)].append(int(j))
    bayes_guess: dict[int, str] = {}
    for (kind, unit_eps), idx in sorted(groups.items()):
        outs = [outputs[j] for j in idx]
        if kind == "word":
            assert perturber.words is not None
            guesses = bayes_inversion(perturber.words, outs, unit_eps, hyps, seed=seed)
        else:
            guesses = bayes_inversion_numbers(perturber.numbers, outs, unit_eps, numbers)
        bayes_guess.update(zip(idx, guesses))
    return bayes_guess


def _cell(
    corpus: _Corpus,
    mechanism: str,
    eps: float,
    space: EmbeddingSpace,
    hyps: HypothesisSet,
    numbers: list[str],
    sample: np.ndarray,
    original_emb: np.ndarray,
    encoder: SentenceEncoder,
    *,
    top_k: int,
    factor: float,
    seed: int,
    dataset: str,
) -> PrivacyRow:
    """One grid cell: perturb the corpus with ``mechanism`` at ``eps``, attack and score it.

    The adaptive strategy is not attacked here (its entity surrogates: see
    :mod:`fedcot.privacy.threats`); its row leaves the recovery rates None.
    """
    t_cell = time.perf_counter()
    perturber = _cell_perturber(mechanism, eps, space, top_k=top_k, factor=factor, seed=seed)
    texts = corpus.texts
    t0 = time.perf_counter()
    perts = perturber.perturb(texts, [f"t{i}" for i in range(len(texts))])
    perturb_s = time.perf_counter() - t0
    if mechanism == "adaptive":  # entity surrogates: see fedcot.privacy.threats
        return _unattacked_row(corpus, perts, mechanism, eps, perturber, perturb_s, t_cell,
                               original_emb, encoder, dataset)  # fmt: skip
    draws = _unit_draws(corpus, perts)
    outputs = [d.output for d in draws]
    kinds = corpus.kind
    t0 = time.perf_counter()
    nn_guess = _nearest_neighbour_guesses(space, hyps, numbers, outputs, kinds)
    bayes_guess = _bayes_guesses(perturber, draws, outputs, kinds, sample, hyps, numbers, seed)
    attack_s = time.perf_counter() - t0

    nn_hit = np.array([_same(o, g, k) for o, g, k in zip(corpus.original, nn_guess, kinds)])
    b_hit = np.array([_same(corpus.original[j], bayes_guess[int(j)], kinds[j]) for j in sample])
    sens = corpus.sensitive
    s_sens = sens[sample] if len(sample) else np.zeros(0, bool)

    row = _unattacked_row(
        corpus, perts, mechanism, eps, perturber, perturb_s, t_cell, original_emb, encoder, dataset
    )
    return replace(
        row,
        n_units=len(draws),
        nn_recovery_all=_rate(nn_hit),
        nn_recovery_sensitive=_rate(nn_hit[sens]),
        bayes_recovery_all=_rate(b_hit),
        bayes_recovery_sensitive=_rate(b_hit[s_sens]),
        seconds=time.perf_counter() - t_cell,
        n_attacked=len(sample),
        n_hypotheses=len(hyps),
        attack_seconds=attack_s,
    )


def normalise_corpus(
    texts: Sequence[str], spans: Sequence[Sequence[dict]] | None
) -> tuple[list[str], list[list[dict]] | None]:
    """Texts as the perturber sees them (normalised), with their spans moved along."""
    out_t: list[str] = []
    out_s: list[list[dict]] = []
    for i, t in enumerate(texts):
        norm, off = normalize_with_offsets(t)
        out_t.append(norm)
        if spans is not None:
            moved = []
            for sp in spans[i]:
                if "start" not in sp:
                    moved.append(dict(sp))
                    continue
                a, b = off[int(sp["start"])], off[int(sp["end"])]
                moved.append({**sp, "start": a, "end": b, "text": norm[a:b]})
            out_s.append(moved)
    return out_t, (out_s if spans is not None else None)


def _record_at(p: Any, start: int) -> Any:
    """The record of perturbation ``p`` that covers source offset ``start``."""
    for d in p.units:
        if d.start <= start < d.end:
            return d
    return None


def _utility(
    corpus: _Corpus, perts: Sequence[Any], original_emb: np.ndarray, encoder: SentenceEncoder
) -> tuple[np.ndarray, list[float], float | None]:
    """Similarity, token change rate and verbatim leakage of annotated spans."""
    texts = corpus.texts
    perturbed = [p.text for p in perts]
    sim = np.einsum("ij,ij->i", original_emb, encoder.encode(perturbed))
    change = [token_change_rate(o, p) for o, p in zip(texts, perturbed)]
    verbatim: float | None = None
    if corpus.spans is not None:
        leaked = total = 0
        for o, p, sp in zip(texts, perturbed, corpus.spans):
            a, b = verbatim_leakage(o, p, sp)
            leaked, total = leaked + a, total + b
        verbatim = leaked / total if total else None
    return sim, change, verbatim


def _unattacked_row(
    corpus: _Corpus,
    perts: Sequence[Any],
    mechanism: str,
    eps: float,
    perturber: Any,
    perturb_s: float,
    t_cell: float,
    original_emb: np.ndarray,
    encoder: SentenceEncoder,
    dataset: str,
) -> PrivacyRow:
    """A row without the per-unit attacks (FedCoT-A: they are run per entity elsewhere)."""
    sim, change, verbatim = _utility(corpus, perts, original_emb, encoder)
    n_private = sum(corpus.n_private)
    return PrivacyRow(
        dataset=dataset,
        mechanism=mechanism,
        epsilon=eps,
        n_texts=len(corpus.texts),
        n_units=len(corpus.original),
        n_sensitive_units=int(corpus.sensitive.sum()),
        verbatim_spans=verbatim,
        nn_recovery_all=None,
        nn_recovery_sensitive=None,
        bayes_recovery_all=None,
        bayes_recovery_sensitive=None,
        similarity=float(np.mean(sim)),
        token_change_rate=float(np.mean(change)),
        epsilon_per_prompt=float(perturber.accountant.summary()["ldp_per_prompt_mean"]),
        units_per_second=n_private / perturb_s if perturb_s > 0 else math.inf,
        seconds=time.perf_counter() - t_cell,
        perturb_seconds=perturb_s,
    )


def _same(original: str, guess: str, kind: str) -> bool:
    if kind == "number":
        a = integer_part(original)
        return a is not None and a == integer_part(guess)
    return original.casefold() == guess.casefold()


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if len(hits) else None


# -- reporting ---------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def rows_to_table(rows: Sequence[PrivacyRow], title: str | None = None) -> Table:
    """A rich table of the grid (rates in %)."""
    from rich.table import Table

    if title is None:
        names = sorted({r.dataset for r in rows})
        n = rows[0].n_texts if rows else 0
        title = f"privacy vs utility: {', '.join(names)} ({n} texts)"
    table = Table(title=title)
    cols = (
        ("mechanism", "left"),
        ("ε", "right"),
        ("verbatim%", "right"),
        ("NN%", "right"),
        ("NN sens%", "right"),
        ("Bayes%", "right"),
        ("Bayes sens%", "right"),
        ("sim", "right"),
        ("changed%", "right"),
        ("ε/prompt", "right"),
        ("units/s", "right"),
        ("s", "right"),
    )
    for name, justify in cols:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r.mechanism,
            f"{r.epsilon:g}",
            _pct(r.verbatim_spans),
            _pct(r.nn_recovery_all),
            _pct(r.nn_recovery_sensitive),
            _pct(r.bayes_recovery_all),
            _pct(r.bayes_recovery_sensitive),
            f"{r.similarity:.3f}",
            _pct(r.token_change_rate),
            f"{r.epsilon_per_prompt:.0f}",
            f"{r.units_per_second:,.0f}",
            f"{r.seconds:.1f}",
        )
    return table


def save_json(rows: Sequence[PrivacyRow], path: str | Path) -> Path:
    """Write the rows as a JSON list of objects (one per cell)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = [_finite(r.to_dict()) for r in rows]
    p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return p


def load_json(path: str | Path) -> list[PrivacyRow]:
    """Read rows written by :func:`save_json`."""
    names = {f.name for f in fields(PrivacyRow)}
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [PrivacyRow(**{k: v for k, v in d.items() if k in names}) for d in data]


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def plot_frontier(rows: Sequence[PrivacyRow], path: str | Path) -> Path:
    """PNG of the privacy-utility frontier, one line per mechanism, points labelled by ε.

    Left: Bayes recovery of sensitive units (all units where no unit is sensitive) against
    semantic similarity. Right, when spans were annotated: verbatim span leakage against ε.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    sensitive = any(r.bayes_recovery_sensitive is not None for r in rows)
    spans = any(r.verbatim_spans is not None for r in rows)
    fig = Figure(figsize=(11 if spans else 6, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if spans else 1, 1)
    by_mech: dict[str, list[PrivacyRow]] = defaultdict(list)
    for r in rows:
        by_mech[r.mechanism].append(r)
    for mech, rs in by_mech.items():
        rs = sorted(rs, key=lambda r: r.epsilon)
        xs = [
            100 * ((r.bayes_recovery_sensitive if sensitive else r.bayes_recovery_all) or 0.0)
            for r in rs
        ]
        ys = [r.similarity for r in rs]
        (line,) = ax.plot(xs, ys, marker="o", label=mech)
        for x, y, r in zip(xs, ys, rs):
            ax.annotate(
                f"ε={r.epsilon:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                fontsize=7, color=line.get_color(),
            )  # fmt: skip
    what = "sensitive units" if sensitive else "all units"
    ax.set_xlabel(f"Bayes attack recovery of {what} (%)  ← more private")
    ax.set_ylabel("semantic similarity (cosine)  ↑ more useful")
    ax.set_title("privacy-utility frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if spans:
        ax2 = fig.add_subplot(1, 2, 2)
        for mech, rs in by_mech.items():
            rs = sorted((r for r in rs if r.verbatim_spans is not None), key=lambda r: r.epsilon)
            ax2.plot(
                [r.epsilon for r in rs], [100 * (r.verbatim_spans or 0.0) for r in rs],
                marker="o", label=mech,
            )  # fmt: skip
        ax2.set_xscale("log")
        ax2.set_xlabel("ε per unit")
        ax2.set_ylabel("private spans left verbatim (%)")
        ax2.set_title("verbatim leakage")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png")
    return p
