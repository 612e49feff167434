"""Inversion attacks on perturbed units: how often can a server recover the original?

The server sees a perturbed unit y and knows the mechanism, its ε and the embedding space.
Two attacks guess the original x:

- :func:`nearest_neighbour_inversion`: x̂ = the hypothesis whose vector is nearest to e_y.
  With the default hypothesis set (which contains every candidate, y included) this guesses
  y itself, so its recovery rate is the rate of units the mechanism left unchanged: the
  baseline any smarter attacker has to beat.
- :func:`bayes_inversion`: the maximum a-posteriori guess
  x̂ = argmax_h log π(h) + log P(y | x = h), with the public unigram prior π
  (:func:`~fedcot.privacy.frequency.unigram_logprob`) and the mechanism's exact likelihood.
  This is the optimal single guess against the mechanism for a prior-distributed x.

The attacker's hypothesis set H
    every candidate of the space ∪ every distinct original word of the evaluated corpus
    (:meth:`HypothesisSet.for_corpus`). Adding the corpus originals models a strong
    attacker who knows the list of private words (names, cities) a client might hold,
    including those outside the space. ``max_hypotheses`` optionally keeps only the most
    frequent candidates (by prior) plus all corpus originals, for speed.

Exactness and speed
    For :class:`~fedcot.privacy.mechanisms.ExponentialMechanism` and
    :class:`~fedcot.privacy.mechanisms.TopKMechanism` the likelihood log P(y | h) is exactly
    what their ``log_likelihood`` returns, but computed once for all outputs: the
    normaliser log Z(h) (exponential) or the top-K sets of all hypotheses (top-K) depend on
    h and ε only, so they are computed once per ε and shared by every y. Any other word
    mechanism goes through ``mech.log_likelihood`` for each distinct (y, ε).

    :class:`~fedcot.privacy.mechanisms.RantextMechanism`'s likelihood is a Monte-Carlo
    estimate over the Laplace noise (the nested-set estimator of its ``log_likelihood``)
    and costs a pass over the whole space per hypothesis. The attack therefore restricts H,
    for each y, to the ``rantext_neighbours`` (default 200) hypotheses most cosine-similar
    to y; corpus originals among them compete like any other hypothesis. This is an
    approximation, a slightly weaker attacker: an original outside that neighbourhood
    cannot be guessed. Each hypothesis's likelihood is estimated once, from
    ``rantext_draws`` (default 1000) seeded noise draws shared by all hypotheses, and read
    off for every y that needs it.

Numbers go through :func:`bayes_inversion_numbers` (uniform prior over the corpus's number
originals; guesses are compared on their integer part, since the numeric mechanism draws
decimals uniformly and so reveals nothing about them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from fedcot.privacy.frequency import unigram_logprob
from fedcot.privacy.mechanisms import (
    ExponentialMechanism,
    NumericMechanism,
    RantextMechanism,
    TopKMechanism,
    WordMechanism,
    check_epsilon,
    log_softmax,
    parse_unit_number,
)
from fedcot.privacy.space import EmbeddingSpace, pairwise_distances

__all__ = [
    "HypothesisSet",
    "bayes_inversion",
    "bayes_inversion_numbers",
    "integer_part",
    "nearest_neighbour_inversion",
    "nearest_number_inversion",
    "recovery_rate",
    "verbatim_leakage",
]

LogPrior = Callable[[str], float]

_CHUNK = 256  # query rows per distance block


# -- the hypothesis set ------------------------------------------------------------------


class HypothesisSet:
    """The attacker's hypotheses H: keys, vectors and log-prior, plus per-ε caches.

    Build one with :meth:`for_corpus` and pass it to the attacks instead of a word list
    when several attacks share it (the caches then carry over: log Z(h) per ε for the
    exponential mechanism, the top-K sets of every hypothesis, guesses per (y, ε)).
    """

    def __init__(
        self,
        space: EmbeddingSpace,
        words: Iterable[str],
        log_prior: LogPrior = unigram_logprob,
    ) -> None:
        self.space = space
        self.words: list[str] = list(dict.fromkeys(space.key(w) for w in words))
        if not self.words:
            raise ValueError("the hypothesis set is empty")
        self.index = {w: i for i, w in enumerate(self.words)}
        self.vectors = np.ascontiguousarray(space.vectors_for(self.words), dtype=np.float32)
        self.sq_norms = np.einsum("ij,ij->i", self.vectors, self.vectors)
        self.log_prior_fn = log_prior
        self._prior: np.ndarray | None = None
        self._unit: np.ndarray | None = None
        self._logz: dict[tuple[str, float], np.ndarray] = {}
        self._topk: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._guesses: dict[tuple[object, ...], str] = {}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def for_corpus(
        cls,
        space: EmbeddingSpace,
        corpus_words: Iterable[str],
        *,
        max_hypotheses: int | None = None,
        log_prior: LogPrior = unigram_logprob,
    ) -> HypothesisSet:
        """H = the space's candidates ∪ the corpus's distinct original words.

        With ``max_hypotheses``, only that many candidates (the most probable under the
        prior) are kept; the corpus originals are always kept.
        """
        originals = list(dict.fromkeys(space.key(w) for w in corpus_words))
        candidates: list[str] = list(space.words)
        if max_hypotheses is not None and max_hypotheses < len(candidates):
            if max_hypotheses < 0:
                raise ValueError(f"max_hypotheses must be >= 0, got {max_hypotheses}")
            prior = np.array([log_prior(w) for w in candidates])
            keep = np.argsort(-prior, kind="stable")[:max_hypotheses]
            candidates = [candidates[i] for i in sorted(keep)]
        return cls(space, [*candidates, *originals], log_prior)

    @property
    def prior(self) -> np.ndarray:
        """log π(h) for every hypothesis (computed once)."""
        if self._prior is None:
            self._prior = np.array([self.log_prior_fn(w) for w in self.words], dtype=np.float64)
        return self._prior

    @property
    def unit_vectors(self) -> np.ndarray:
        """Hypothesis vectors scaled to unit length (for cosine neighbourhoods)."""
        if self._unit is None:
            n = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self._unit = self.vectors / np.maximum(n, 1e-12)
        return self._unit

    def distances(self, queries: np.ndarray) -> np.ndarray:
        """Euclidean distances from each query row to every hypothesis, shape (B, |H|)."""
        return pairwise_distances(queries, self.vectors, self.sq_norms)


def _as_set(
    space: EmbeddingSpace, hypotheses: Sequence[str] | HypothesisSet, log_prior: LogPrior
) -> HypothesisSet:
    if isinstance(hypotheses, HypothesisSet):
        if hypotheses.space is not space:
            raise ValueError("the hypothesis set was built on a different embedding space")
        return hypotheses
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a sequence of words, not a single string")
    return HypothesisSet(space, hypotheses, log_prior)


# -- nearest neighbour -------------------------------------------------------------------


def nearest_neighbour_inversion(
    space: EmbeddingSpace,
    outputs: Sequence[str],
    hypotheses: Sequence[str] | HypothesisSet,
) -> list[str]:
    """Guess x̂ = the hypothesis whose vector (``space.vector``) is nearest to e_y.

    ``hypotheses`` is the attacker's set H (see the module docstring; by default every
    candidate ∪ the corpus's originals). Guesses are candidate keys (lower case).
    """
    hs = _as_set(space, hypotheses, unigram_logprob)
    keys = [space.key(y) for y in outputs]
    distinct = list(dict.fromkeys(keys))
    if not distinct:
        return []
    best: dict[str, str] = {}
    for s in range(0, len(distinct), _CHUNK):
        chunk = distinct[s : s + _CHUNK]
        d = hs.distances(space.vectors_for(chunk))
        for k, j in zip(chunk, np.argmin(d, axis=1)):
            best[k] = hs.words[int(j)]
    return [best[k] for k in keys]


# -- Bayes (MAP) inversion ---------------------------------------------------------------


def bayes_inversion(
    mech: WordMechanism,
    outputs: Sequence[str],
    eps: float,
    hypotheses: Sequence[str] | HypothesisSet,
    log_prior: LogPrior = unigram_logprob,
    *,
    rantext_neighbours: int = 200,
    rantext_draws: int = 1000,
    seed: int = 0,
) -> list[str]:
    """MAP guess x̂ = argmax_h log π(h) + log P(y | x = h) for each output y.

    ``mech`` is the word mechanism that produced ``outputs`` at ``eps``; ``hypotheses`` is
    the attacker's set H (a word list, or a shared :class:`HypothesisSet`, whose own prior
    then applies). The likelihood is exact for the exponential and top-K mechanisms and for
    any mechanism without a fast path (``mech.log_likelihood(space.index[space.key(y)],
    H_vectors, eps)``); for RANTEXT it is a Monte-Carlo estimate from ``rantext_draws``
    noise draws and H is cut to the ``rantext_neighbours`` hypotheses most cosine-similar
    to y (see the module docstring). Guesses are cached per distinct (y, ε). An output
    that is not a candidate of the space (no word mechanism produces one) is guessed as
    itself.
    """
    eps_v = float(check_epsilon(eps)[0])
    space = mech.space
    hs = _as_set(space, hypotheses, log_prior)
    keys = [space.key(y) for y in outputs]
    tag = _mechanism_tag(mech, (rantext_neighbours, rantext_draws, seed))
    todo = sorted({k for k in keys if k in space.index and (tag, eps_v, k) not in hs._guesses})
    if todo:
        y_idx = np.array([space.index[k] for k in todo], dtype=np.int64)
        if _is(mech, ExponentialMechanism):
            rows = _bayes_exponential(mech, hs, y_idx, eps_v)  # type: ignore[arg-type]
        elif _is(mech, TopKMechanism):
            rows = _bayes_topk(mech, hs, y_idx, eps_v)  # type: ignore[arg-type]
        elif _is(mech, RantextMechanism):
            rows = _bayes_rantext(
                mech,  # type: ignore[arg-type]
                hs,
                y_idx,
                eps_v,
                rantext_neighbours,
                seed,
                rantext_draws,
            )
        else:
            rows = _bayes_generic(mech, hs, y_idx, eps_v)
        for k, r in zip(todo, rows):
            hs._guesses[(tag, eps_v, k)] = k if r < 0 else hs.words[r]
    return [hs._guesses.get((tag, eps_v, k), y) for k, y in zip(keys, outputs)]


def _is(mech: WordMechanism, cls: type) -> bool:
    """``mech`` is a ``cls`` whose likelihood is ``cls``'s own (fast paths are exact)."""
    return isinstance(mech, cls) and type(mech).log_likelihood is cls.log_likelihood


def _mechanism_tag(mech: WordMechanism, rantext: tuple[int, int, int]) -> tuple[object, ...]:
    if _is(mech, TopKMechanism):
        return ("topk", mech.k)  # type: ignore[attr-defined]
    if _is(mech, ExponentialMechanism):
        return ("exponential",)
    if _is(mech, RantextMechanism):
        return ("rantext", *rantext)
    return (type(mech).__name__, id(mech))


def _bayes_generic(
    mech: WordMechanism, hs: HypothesisSet, y_idx: np.ndarray, eps: float
) -> list[int]:
    prior = hs.prior
    out = []
    for y in y_idx:
        score = prior + mech.log_likelihood(int(y), hs.vectors, eps)
        out.append(_argmax_finite(score))
    return out


def _argmax_finite(score: np.ndarray) -> int:
    j = int(np.argmax(score))
    return j if np.isfinite(score[j]) else -1


def _bayes_exponential(
    mech: ExponentialMechanism, hs: HypothesisSet, y_idx: np.ndarray, eps: float
) -> list[int]:
    """log P(y|h) = s·u(h, y) − log Z(h), s = ε/(2Δu); log Z(h) cached per ε."""
    space = hs.space
    scale = eps / (2.0 * mech.delta_u)
    key = ("exponential", eps)
    logz = hs._logz.get(key)
    if logz is None:
        logz = np.empty(len(hs))
        for s in range(0, len(hs), _CHUNK):
            u = space.utilities(hs.vectors[s : s + _CHUNK]).astype(np.float64)
            u *= scale
            m = u.max(axis=1, keepdims=True)
            logz[s : s + _CHUNK] = (np.log(np.exp(u - m).sum(axis=1, keepdims=True)) + m)[:, 0]
        hs._logz[key] = logz
    base = hs.prior - logz
    out: list[int] = []
    for s in range(0, len(y_idx), _CHUNK):
        d = hs.distances(space.vectors[y_idx[s : s + _CHUNK]]).astype(np.float64)
        np.minimum(d, space.diameter, out=d)
        score = base[None, :] - (scale / space.diameter) * d
        out.extend(int(j) for j in np.argmax(score, axis=1))
    return out


def _bayes_topk(mech: TopKMechanism, hs: HypothesisSet, y_idx: np.ndarray, eps: float) -> list[int]:
    """log P(y|h) = log-softmax over h's K nearest candidates, −∞ when y is not among them."""
    k = mech.k
    table = hs._topk.get(k)
    if table is None:
        idx, util = hs.space.neighbours(hs.words, k)
        order = np.argsort(idx.ravel(), kind="stable")
        table = (idx, util, order)
        hs._topk[k] = table
    idx, util, order = table
    key = (f"topk{k}", eps)
    logp = hs._logz.get(key)
    if logp is None:
        logp = log_softmax(eps / (2.0 * mech.delta_u) * util.astype(np.float64))
        hs._logz[key] = logp
    flat_sorted = idx.ravel()[order]
    lo = np.searchsorted(flat_sorted, y_idx, side="left")
    hi = np.searchsorted(flat_sorted, y_idx, side="right")
    prior = hs.prior
    flat_logp = logp.ravel()
    out: list[int] = []
    for a, b in zip(lo, hi):
        if a == b:  # no hypothesis can produce y
            out.append(-1)
            continue
        pos = order[a:b]
        rows = pos // k
        score = prior[rows] + flat_logp[pos]
        out.append(int(rows[np.argmax(score)]))
    return out


def _bayes_rantext(
    mech: RantextMechanism,
    hs: HypothesisSet,
    y_idx: np.ndarray,
    eps: float,
    neighbours: int,
    seed: int,
    draws: int,
) -> list[int]:
    """MAP over each y's ``neighbours`` most cosine-similar hypotheses (an approximation).

    P(y | h) is RANTEXT's nested-set marginal estimated from ``draws`` noise draws, the
    estimator of :meth:`RantextMechanism.log_likelihood`. The same (seeded) draws serve every
    hypothesis (common random numbers): each estimate is as good as with fresh draws, the
    comparison between hypotheses is less noisy, and a threshold cos(e_h, e_h + n) for all
    draws n is one matrix product instead of ``draws`` fresh Laplace vectors per hypothesis.
    """
    space = hs.space
    n_near = min(max(1, neighbours), len(hs))
    # 1. Each y's neighbourhood in H.
    near: list[np.ndarray] = []
    y_unit = space.vectors[y_idx]
    y_unit = y_unit / np.maximum(np.linalg.norm(y_unit, axis=1, keepdims=True), 1e-12)
    for s in range(0, len(y_idx), _CHUNK):
        cos = y_unit[s : s + _CHUNK] @ hs.unit_vectors.T
        if n_near < len(hs):
            part = np.argpartition(-cos, n_near - 1, axis=1)[:, :n_near]
        else:
            part = np.broadcast_to(np.arange(len(hs)), cos.shape)
        near.extend(np.sort(row) for row in part)
    # 2. The noise draws: ê = e_h + n with n_d ~ Laplace(0, Δf_d / (ε/2)), as in sampling.
    rng = np.random.default_rng(seed)
    noise = rng.laplace(size=(draws, space.dim)) * (mech.delta_f / (0.5 * eps))[None, :]
    noise_sq = np.einsum("ij,ij->i", noise, noise)
    # 3. log P(y | h) for every (h, y) pair needed, one pass per hypothesis.
    needed: dict[int, list[int]] = {}
    for j, rows in enumerate(near):
        for h in rows.tolist():
            needed.setdefault(h, []).append(j)
    loglik: dict[tuple[int, int], float] = {}
    hyps = sorted(needed)
    for s in range(0, len(hyps), 64):
        chunk = hyps[s : s + 64]
        x = hs.vectors[chunk].astype(np.float64)
        cos = mech._cosines(x.astype(np.float32)).astype(np.float64)
        xx = np.einsum("ij,ij->i", x, x)[:, None]
        xn = x @ noise.T
        den = np.sqrt(xx) * np.sqrt(np.maximum(xx + 2.0 * xn + noise_sq[None, :], 0.0))
        thr = (xx + xn) / np.maximum(den, 1e-12)
        rows = np.repeat(np.arange(len(chunk)), [len(needed[h]) for h in chunk])
        cols = y_idx[[j for h in chunk for j in needed[h]]]
        logp = nested_set_logprobs(cos, thr, eps / (2.0 * mech.delta_u), rows, cols)
        pairs = ((h, j) for h in chunk for j in needed[h])
        loglik.update(zip(pairs, logp.tolist()))
    # 4. MAP per y.
    prior = hs.prior
    out: list[int] = []
    for j, rows in enumerate(near):
        score = prior[rows] + np.array([loglik[(h, j)] for h in rows.tolist()])
        out.append(int(rows[int(np.argmax(score))]))
    return out


def nested_set_logprobs(
    cos: np.ndarray, thr: np.ndarray, scale: float, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """log P(y = cols[i] | x = row rows[i]) under RANTEXT for given noise thresholds.

    ``cos`` (B, |V|): cosines of each hypothesis to every candidate; ``thr`` (B, S): the
    thresholds cos(e_x, ê) of S noise draws; ``scale`` = ε/(2Δu). The same estimator as
    :func:`fedcot.privacy.mechanisms._nested_set_probs`,
    P(y) = mean_t 1{cos_y ≥ t}·w_y / Σ_{cos_v ≥ t} w_v (an empty set gives the most similar
    candidate), but without sorting the space: each candidate is binned by how many
    thresholds it reaches, so one row costs O(|V| log S) and only the wanted entries are
    formed.
    """
    b_rows = cos.shape[0]
    n_thr = thr.shape[1]
    logw = scale * cos
    logw -= logw.max(axis=1, keepdims=True)
    w = np.exp(logw)
    # reach[r, v] = number of thresholds t of row r with t ≤ cos[r, v]; candidate v is in
    # the adjacency set of threshold i (sorted ascending) iff i < reach[r, v]. Rows are
    # offset by 4 (cosines lie in [-1, 1]) so one searchsorted serves the whole batch.
    off = 4.0 * np.arange(b_rows)[:, None]
    sorted_thr = (np.sort(thr, axis=1) + off).ravel()
    reach = np.searchsorted(sorted_thr, (cos + off).ravel(), side="right").reshape(b_rows, -1)
    reach -= (n_thr * np.arange(b_rows))[:, None]
    # Z[r, i] = Σ_{v: reach > i} w_v: weights binned by reach, then suffix sums.
    binned = np.bincount(
        (reach + (n_thr + 1) * np.arange(b_rows)[:, None]).ravel(),
        weights=w.ravel(),
        minlength=b_rows * (n_thr + 1),
    ).reshape(b_rows, n_thr + 1)
    z = np.cumsum(binned[:, ::-1], axis=1)[:, ::-1][:, 1:]
    inv_z = np.divide(1.0, z, out=np.zeros_like(z), where=z > 0)
    prefix = np.concatenate([np.zeros((b_rows, 1)), np.cumsum(inv_z, axis=1)], axis=1)
    p = w[rows, cols] * prefix[rows, reach[rows, cols]] / n_thr
    # Thresholds above every cosine leave the set empty: the most similar candidate.
    n_empty = n_thr - reach.max(axis=1)
    top = np.argmax(cos, axis=1)
    p += np.where(cols == top[rows], n_empty[rows] / n_thr, 0.0)
    return np.log(np.maximum(p, 1e-300))


# -- numbers -----------------------------------------------------------------------------


def integer_part(text: str) -> int | None:
    """The integer part of a number unit ("1,250.75" → 1250); ``None`` if not a number."""
    try:
        return int(parse_unit_number(text)[0])
    except ValueError:
        return None


def _number_values(texts: Sequence[str]) -> np.ndarray:
    vals = []
    for t in texts:
        try:
            vals.append(parse_unit_number(t)[0])
        except ValueError as exc:
            raise ValueError(f"not a number unit: {t!r}") from exc
    return np.array(vals, dtype=np.float64)


def bayes_inversion_numbers(
    mech: NumericMechanism,
    outputs: Sequence[str],
    eps: float,
    hypotheses: Sequence[str],
) -> list[str]:
    """MAP guess of each number output's original among ``hypotheses`` (uniform prior).

    The numeric mechanism's output carries information only in its integer part (a grid
    value; decimals are drawn uniformly), so x̂ = argmax_h P(grid value of y | x = h),
    exactly, from the mechanism's own distribution. Compare guesses with originals on
    their integer part (:func:`integer_part`). ``hypotheses`` is the attacker's list of
    candidate numbers (by default every distinct number original of the corpus).
    """
    eps_v = float(check_epsilon(eps)[0])
    if not outputs:
        return []
    hyps = list(dict.fromkeys(hypotheses))
    if not hyps:
        raise ValueError("the hypothesis set is empty")
    h_vals = _number_values(hyps)
    logp = log_softmax(eps_v / (2.0 * mech.delta_u) * mech._utilities(h_vals))  # (|H|, G)
    grid = mech.grid
    y_vals = np.floor(_number_values(outputs))
    # The grid value an output came from; anything off the grid maps to the nearest value.
    gi = np.clip(np.searchsorted(grid, y_vals), 0, len(grid) - 1)
    left = np.clip(gi - 1, 0, len(grid) - 1)
    gi = np.where(np.abs(grid[left] - y_vals) < np.abs(grid[gi] - y_vals), left, gi)
    best = np.argmax(logp[:, gi], axis=0)
    return [hyps[int(b)] for b in best]


def nearest_number_inversion(outputs: Sequence[str], hypotheses: Sequence[str]) -> list[str]:
    """Guess the hypothesis nearest to each output on the mechanism's log scale."""
    if not outputs:
        return []
    hyps = list(dict.fromkeys(hypotheses))
    if not hyps:
        raise ValueError("the hypothesis set is empty")
    h = np.log10(1.0 + _number_values(hyps))
    y = np.log10(1.0 + _number_values(outputs))
    best = np.argmin(np.abs(y[:, None] - h[None, :]), axis=1)
    return [hyps[int(b)] for b in best]


# -- scoring -----------------------------------------------------------------------------


def recovery_rate(
    originals: Sequence[str],
    guesses: Sequence[str],
    mask: Sequence[bool] | np.ndarray | None = None,
) -> float:
    """Share of (masked) units whose guess equals the original, case-insensitively.

    ``nan`` when no unit is selected.
    """
    if len(originals) != len(guesses):
        raise ValueError("originals and guesses differ in length")
    sel = np.ones(len(originals), bool) if mask is None else np.asarray(mask, dtype=bool)
    if len(sel) != len(originals):
        raise ValueError("mask and originals differ in length")
    n = int(sel.sum())
    if n == 0:
        return math.nan
    hits = sum(1 for o, g, m in zip(originals, guesses, sel) if m and o.casefold() == g.casefold())
    return hits / n


def verbatim_leakage(original: str, perturbed: str, spans: Sequence[dict]) -> tuple[int, int]:
    """(#spans whose exact text appears verbatim in ``perturbed``, #spans).

    A span's text counts as present when it occurs as a whole (case-sensitive, not as part
    of a longer word or number: "73" leaks neither through "1,273" nor through "73,500").
    ``original`` is used to check the spans: each span's ``text`` must be
    ``original[start:end]`` where offsets are given.
    """
    leaked = 0
    for sp in spans:
        text = sp["text"]
        if "start" in sp and "end" in sp and original[sp["start"] : sp["end"]] != text:
            raise ValueError(f"span {sp!r} does not match the original text")
        if not text:
            continue
        # Not inside a longer word, nor inside a number with separators ("7" in "7,852").
        pattern = rf"(?<!\w)(?<!\d[.,]){re.escape(text)}(?!\w)(?![.,]\d)"
        if re.search(pattern, perturbed):
            leaked += 1
    return leaked, len(spans)
