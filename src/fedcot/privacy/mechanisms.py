"""Local differential-privacy mechanisms for text units.

Each mechanism maps one private unit x to a stand-in y drawn from a fixed output set, with
an exact, known distribution P(y | x). Sampling is batched over all units of a batch and done
with the Gumbel-max trick in log space (argmax of log-weight + Gumbel noise draws exactly from
the softmax), seeded by a ``numpy.random.Generator``.

- :class:`ExponentialMechanism` (FedCoT-E): P(y|x) ∝ exp(ε·u(x,y) / (2Δu)) over the whole
  candidate set, u(x,y) = -min(‖e_x − e_y‖, D)/D ∈ [-1, 0], Δu = 1. ε-LDP per unit.
- :class:`TopKMechanism` (CusText-style): the same weights restricted to the K nearest
  candidates of x. Fast; its guarantee is weaker (see docs/privacy.md).
- :class:`RantextMechanism` (InferDPT's RANTEXT, for comparison with FATE-LLM): a Laplace-noised
  copy of e_x fixes a random adjacency set (candidates at least as cosine-similar to x as the
  noised copy is), then the exponential mechanism with cosine utility (Δu = 2) inside it.
- :class:`NumericMechanism`: numbers go through an exponential mechanism on a fixed public
  grid with a log-scale distance, so digits never pass in the clear.
- :class:`PunctuationMechanism`: k-ary randomised response over a fixed punctuation set.
"""

from __future__ import annotations

import abc
import math
import re
import string
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from fedcot.errors import ConfigError
from fedcot.privacy.space import EmbeddingSpace

_CHUNK = 256


def check_epsilon(eps: float | Sequence[float] | np.ndarray, what: str = "epsilon") -> np.ndarray:
    """Validate ε values: finite and > 0. Returns a float64 array."""
    arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if np.isnan(arr).any():
        raise ConfigError(f"{what} is NaN", hint="give a positive number, e.g. 3.0")
    if np.isinf(arr).any():
        raise ConfigError(
            f"{what} is infinite", hint="for no privacy at all use the strategy 'none'"
        )
    if (arr <= 0).any():
        bad = float(arr[arr <= 0][0])
        raise ConfigError(
            f"{what} must be > 0 (got {bad})",
            hint="smaller ε means more privacy; use e.g. 1.0–10.0, or 'none' for no privacy",
        )
    return arr


def per_unit_epsilon(eps: float | Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """Validated ε per unit: one value broadcast to ``n`` units, or ``n`` values."""
    arr = check_epsilon(eps)
    if len(arr) == 1 and n != 1:
        return np.full(n, arr[0])
    if len(arr) != n:
        raise ValueError(f"got {len(arr)} ε values for {n} units")
    return arr


def gumbel_argmax(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row-wise exact sample from softmax(logits) via the Gumbel-max trick."""
    g = rng.gumbel(size=logits.shape).astype(logits.dtype, copy=False)
    g += logits
    return np.argmax(g, axis=1)


def _invert(cdf: np.ndarray, u: float) -> int:
    """Index drawn from cumulative weights ``cdf`` by a uniform ``u`` in [0, 1)."""
    return min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(cdf) - 1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis (-inf entries allowed)."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)) + m
    return x - z


class Mechanism(abc.ABC):
    """Maps unit strings to stand-ins. ``sample`` is batched; ``log_probs`` is exact."""

    name: str = "mechanism"
    delta_u: float = 1.0

    @abc.abstractmethod
    def sample(self, texts: Sequence[str], eps: np.ndarray, rng: np.random.Generator) -> list[str]:
        """One stand-in per unit; ``eps[i]`` is the ε of unit i."""

    @abc.abstractmethod
    def distribution(self, text: str, eps: float) -> tuple[list[str], np.ndarray]:
        """The exact output distribution for one unit: (outputs, log-probabilities)."""


# -- word mechanisms over an embedding space ---------------------------------------------


class WordMechanism(Mechanism):
    """A mechanism whose outputs are the candidates of an :class:`EmbeddingSpace`."""

    def __init__(self, space: EmbeddingSpace) -> None:
        self.space = space

    def distribution(self, text: str, eps: float) -> tuple[list[str], np.ndarray]:
        idx, logp = self.index_distribution(text, eps)
        return [self.space.words[i] for i in idx], logp

    @abc.abstractmethod
    def index_distribution(self, text: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """(candidate indices, log-probabilities) of the output distribution."""

    @abc.abstractmethod
    def log_likelihood(self, y: int, hypotheses: np.ndarray, eps: float) -> np.ndarray:
        """log P(y | x = h) for each hypothesis vector h (rows), as used by inversion attacks."""


class ExponentialMechanism(WordMechanism):
    """FedCoT-E: exponential mechanism over the whole candidate set. ε-LDP per unit.

    Sampling is by inverse CDF: one uniform draw per unit against the cumulative weights.
    The cumulative weights of candidate words are cached per (word, ε) (frequent words such
    as "the" recur in every prompt), so a cache hit costs one binary search. The
    distribution is exact either way.
    """

    name = "exponential"
    delta_u = 1.0

    def __init__(self, space: EmbeddingSpace, cache_size: int = 2048) -> None:
        super().__init__(space)
        self.cache_size = cache_size  # rows of |V| float32: 2048 × 25k words ≈ 200 MB
        self._cdf: OrderedDict[tuple[str, float], np.ndarray] = OrderedDict()

    def _scale(self, eps: np.ndarray) -> np.ndarray:
        return eps / (2.0 * self.delta_u)

    def _cdfs(self, texts: Sequence[str], eps: np.ndarray) -> np.ndarray:
        """Cumulative (unnormalised) weights, one row per unit, float64."""
        u = self.space.utilities(self.space.vectors_for(texts))
        u *= self._scale(eps).astype(np.float32)[:, None]
        u -= u.max(axis=1, keepdims=True)
        np.exp(u, out=u)
        return np.cumsum(u, axis=1, dtype=np.float64)

    def sample(self, texts: Sequence[str], eps: np.ndarray, rng: np.random.Generator) -> list[str]:
        eps = per_unit_epsilon(eps, len(texts))
        uniforms = rng.random(len(texts))
        keys = [(self.space.key(t), float(e)) for t, e in zip(texts, eps)]
        picks = np.empty(len(texts), dtype=np.int64)
        misses: dict[tuple[str, float], list[int]] = {}
        for i, k in enumerate(keys):
            hit = self._cdf.get(k)
            if hit is None:
                misses.setdefault(k, []).append(i)
            else:  # resolve hits first: computing misses may evict them
                self._cdf.move_to_end(k)
                picks[i] = _invert(hit, uniforms[i])
        # Each distinct (word, ε) of the batch is computed once, however often it occurs.
        distinct = list(misses)
        for s in range(0, len(distinct), _CHUNK):
            part = distinct[s : s + _CHUNK]
            first = [misses[k][0] for k in part]
            cdf = self._cdfs([texts[i] for i in first], eps[first])
            for j, k in enumerate(part):
                for i in misses[k]:
                    picks[i] = _invert(cdf[j], uniforms[i])
                if k[0] in self.space.index and self.cache_size > 0:
                    self._remember(k, cdf[j].astype(np.float32))
        words = self.space.words
        return [words[i] for i in picks]

    def _remember(self, key: tuple[str, float], cdf: np.ndarray) -> None:
        self._cdf[key] = cdf
        while len(self._cdf) > self.cache_size:
            self._cdf.popitem(last=False)

    def index_distribution(self, text: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
        eps_v = float(check_epsilon(eps)[0])
        u = self.space.utilities(self.space.vector(text)[None, :])[0].astype(np.float64)
        return np.arange(len(self.space)), log_softmax(eps_v / (2 * self.delta_u) * u)

    def log_likelihood(self, y: int, hypotheses: np.ndarray, eps: float) -> np.ndarray:
        eps_v = float(check_epsilon(eps)[0])
        out = np.empty(len(hypotheses))
        for s in range(0, len(hypotheses), _CHUNK):
            u = self.space.utilities(hypotheses[s : s + _CHUNK]).astype(np.float64)
            u *= eps_v / (2 * self.delta_u)
            out[s : s + _CHUNK] = log_softmax(u)[:, y]
        return out


class TopKMechanism(WordMechanism):
    """CusText-style: exponential weights restricted to the K nearest candidates of x."""

    name = "topk"
    delta_u = 1.0

    def __init__(self, space: EmbeddingSpace, k: int = 32) -> None:
        super().__init__(space)
        if k < 2:
            raise ConfigError("top_k must be at least 2", hint="use e.g. top_k = 32")
        self.k = min(k, len(space))

    def sample(self, texts: Sequence[str], eps: np.ndarray, rng: np.random.Generator) -> list[str]:
        eps = per_unit_epsilon(eps, len(texts))
        if not texts:
            return []
        idx, util = self.space.neighbours(texts, self.k)
        logits = util * (eps / (2 * self.delta_u)).astype(np.float32)[:, None]
        pick = gumbel_argmax(logits, rng)
        words = self.space.words
        return [words[i] for i in idx[np.arange(len(texts)), pick]]

    def index_distribution(self, text: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
        eps_v = float(check_epsilon(eps)[0])
        idx, util = self.space.neighbours([text], self.k)
        return idx[0], log_softmax(eps_v / (2 * self.delta_u) * util[0].astype(np.float64))

    def log_likelihood(self, y: int, hypotheses: np.ndarray, eps: float) -> np.ndarray:
        eps_v = float(check_epsilon(eps)[0])
        idx, util = self.space.topk(hypotheses, self.k)
        logp = log_softmax(eps_v / (2 * self.delta_u) * util.astype(np.float64))
        hit = idx == y
        return np.where(hit.any(axis=1), (logp * hit).sum(axis=1), -np.inf)


class RantextMechanism(WordMechanism):
    """InferDPT's RANTEXT with cosine utility (Δu = 2, the range of cosine similarity).

    Per unit: ê = e_x + Laplace(0, Δf/(ε/2)) per dimension (Δf: each dimension's range over
    V); the adjacency set is {y : cos(e_x, e_y) ≥ cos(e_x, ê)}; then y is drawn with weight
    exp(ε·cos(e_x, e_y)/(2Δu)) inside it (the most similar candidate if the set is empty).
    The sets are nested in the threshold, so the marginal over the noise is a 1-D integral,
    estimated in :meth:`index_distribution` from ``noise_samples`` threshold draws.
    """

    name = "rantext"
    delta_u = 2.0

    def __init__(
        self, space: EmbeddingSpace, noise_samples: int = 2000, cache_size: int = 2048
    ) -> None:
        super().__init__(space)
        self.cache_size = cache_size
        self._rows: dict[str, np.ndarray] = {}
        v = space.vectors
        self.delta_f = (v.max(axis=0) - v.min(axis=0)).astype(np.float64)
        self._unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self.noise_samples = noise_samples

    def _cosines(self, queries: np.ndarray) -> np.ndarray:
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        return q @ self._unit.T

    def thresholds(self, x: np.ndarray, eps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """cos(e_x, ê) for noised copies ê of each row of x (one draw per row)."""
        scale = self.delta_f[None, :] / (0.5 * eps[:, None])
        noised = x + rng.laplace(size=x.shape) * scale
        num = (x * noised).sum(axis=1)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(noised, axis=1)
        return num / np.maximum(den, 1e-12)

    def sample(self, texts: Sequence[str], eps: np.ndarray, rng: np.random.Generator) -> list[str]:
        eps = per_unit_epsilon(eps, len(texts))
        if not texts:
            return []
        x = self.space.vectors_for(texts).astype(np.float64)
        thr = self.thresholds(x, eps, rng)
        uniforms = rng.random(len(texts))
        rows = self._cos_rows(texts, x)
        picks = np.empty(len(texts), dtype=np.int64)
        for i, cos in enumerate(rows):
            inside = cos >= thr[i]
            if not inside.any():  # empty adjacency set: the most similar candidate
                picks[i] = int(np.argmax(cos))
                continue
            w = np.exp(float(eps[i]) / (2 * self.delta_u) * (cos - 1.0))
            w[~inside] = 0.0
            picks[i] = _invert(np.cumsum(w, dtype=np.float64), uniforms[i])
        words = self.space.words
        return [words[i] for i in picks]

    def _cos_rows(self, texts: Sequence[str], x: np.ndarray) -> list[np.ndarray]:
        """cos(e_x, e_v) for every candidate v, cached for candidate words."""
        keys = [self.space.key(t) for t in texts]
        rows: list[np.ndarray | None] = [self._rows.get(k) for k in keys]
        misses: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            if r is None:
                misses.setdefault(keys[i], []).append(i)
        distinct = list(misses)
        for s in range(0, len(distinct), _CHUNK):
            part = distinct[s : s + _CHUNK]
            cos = self._cosines(x[[misses[k][0] for k in part]].astype(np.float32))
            for j, k in enumerate(part):
                for i in misses[k]:
                    rows[i] = cos[j]
                if k in self.space.index and len(self._rows) < self.cache_size:
                    self._rows[k] = cos[j].copy()
        return rows  # type: ignore[return-value]

    def index_distribution(
        self, text: str, eps: float, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        eps_v = float(check_epsilon(eps)[0])
        rng = rng or np.random.default_rng(0)
        x = self.space.vector(text).astype(np.float64)[None, :]
        cos = self._cosines(x.astype(np.float32))[0].astype(np.float64)
        thr = self.thresholds(
            np.repeat(x, self.noise_samples, axis=0), np.full(self.noise_samples, eps_v), rng
        )
        return np.arange(len(cos)), np.log(np.maximum(_nested_set_probs(cos, thr, eps_v), 1e-300))

    def log_likelihood(self, y: int, hypotheses: np.ndarray, eps: float) -> np.ndarray:
        eps_v = float(check_epsilon(eps)[0])
        rng = np.random.default_rng(0)
        out = np.empty(len(hypotheses))
        for i, h in enumerate(hypotheses.astype(np.float64)):
            cos = self._cosines(h[None, :].astype(np.float32))[0].astype(np.float64)
            thr = self.thresholds(np.repeat(h[None, :], 200, axis=0), np.full(200, eps_v), rng)
            out[i] = math.log(max(_nested_set_probs(cos, thr, eps_v)[y], 1e-300))
        return out


def _nested_set_probs(cos: np.ndarray, thr: np.ndarray, eps: float) -> np.ndarray:
    """P(y) = mean over thresholds t of 1{cos_y ≥ t}·w_y / Σ_{cos_v ≥ t} w_v (empty → argmax)."""
    order = np.argsort(-cos, kind="stable")
    c_sorted = cos[order]
    logw = eps / (2 * RantextMechanism.delta_u) * c_sorted
    m = logw.max()
    cum = np.cumsum(np.exp(logw - m))  # cum[r]: total weight of the r+1 most similar
    # Size of each adjacency set: how many candidates reach the threshold.
    sizes = np.searchsorted(-c_sorted, -thr, side="right")
    n_empty = int((sizes == 0).sum())
    sizes = sizes[sizes > 0]
    # Σ_j 1{rank < size_j} / Z(size_j): accumulate 1/Z per set size, then suffix-sum.
    acc = np.zeros(len(cos) + 1)
    np.add.at(acc, sizes, 1.0 / cum[sizes - 1])
    suffix = np.cumsum(acc[::-1])[::-1][1:]  # suffix[r] = Σ_{size > r} 1/Z(size)
    p_sorted = np.exp(logw - m) * suffix / len(thr)
    p_sorted[0] += n_empty / len(thr)
    p = np.empty_like(p_sorted)
    p[order] = p_sorted
    return p


# -- numbers -----------------------------------------------------------------------------

_NUM_CLEAN = re.compile(r"^\d+(?:[.,]\d+)*$")


def parse_unit_number(text: str) -> tuple[float, int, bool]:
    """'1,250.75' → (1250.75, decimals 2, thousands separators True)."""
    if not _NUM_CLEAN.match(text):
        raise ValueError(f"not a number unit: {text!r}")
    groups = re.split(r"[.,]", text)
    seps = re.findall(r"[.,]", text)
    if not seps:
        return float(text), 0, False
    # A trailing group of other than 3 digits after the last separator is a decimal part.
    last_is_decimal = len(groups[-1]) != 3 or (seps[-1] == "." and len(set(seps)) == 2)
    if last_is_decimal:
        int_part = "".join(groups[:-1])
        return float(f"{int_part}.{groups[-1]}"), len(groups[-1]), len(seps) > 1
    return float("".join(groups)), 0, True


def default_number_grid() -> np.ndarray:
    """0..99 and 2,000 log-spaced values up to 10^10 (rounded to integers)."""
    logspaced = np.round(10 ** np.linspace(0, 10, 2001))
    return np.unique(np.concatenate([np.arange(100, dtype=np.float64), logspaced]))


class NumericMechanism(Mechanism):
    """Exponential mechanism on a fixed grid with u = -min(|g(x) − g(y)|, R)/R.

    g(v) = log10(1 + v) and R = g(max grid value), so u ∈ [-1, 0] and Δu = 1. The output
    keeps the unit's shape (decimal places drawn uniformly, thousands separators) but none
    of its digits.
    """

    name = "numeric"
    delta_u = 1.0

    def __init__(self, grid: np.ndarray | None = None) -> None:
        self.grid = np.asarray(grid if grid is not None else default_number_grid(), np.float64)
        self._g = np.log10(1.0 + self.grid)
        self.range = float(self._g.max())

    def _utilities(self, values: np.ndarray) -> np.ndarray:
        d = np.abs(np.log10(1.0 + values)[:, None] - self._g[None, :])
        return -np.minimum(d, self.range) / self.range

    def sample(self, texts: Sequence[str], eps: np.ndarray, rng: np.random.Generator) -> list[str]:
        eps = per_unit_epsilon(eps, len(texts))
        if not texts:
            return []
        parsed = [parse_unit_number(t) for t in texts]
        values = np.array([p[0] for p in parsed])
        logits = self._utilities(values) * (eps / (2 * self.delta_u))[:, None]
        picks = self.grid[gumbel_argmax(logits, rng)]
        return [self._format(v, dec, seps, rng) for v, (_, dec, seps) in zip(picks, parsed)]

    @staticmethod
    def _format(value: float, decimals: int, seps: bool, rng: np.random.Generator) -> str:
        body = f"{int(value):,}" if seps else str(int(value))
        if decimals:
            body += "." + "".join(str(d) for d in rng.integers(0, 10, size=decimals))
        return body

    def distribution(self, text: str, eps: float) -> tuple[list[str], np.ndarray]:
        """Distribution over grid values (the integer part of the output)."""
        eps_v = float(check_epsilon(eps)[0])
        value = parse_unit_number(text)[0]
        logp = log_softmax(eps_v / (2 * self.delta_u) * self._utilities(np.array([value]))[0])
        return [str(int(v)) for v in self.grid], logp


# -- punctuation -------------------------------------------------------------------------

PUNCTUATION = tuple(string.punctuation)


class PunctuationMechanism(Mechanism):
    """k-ary randomised response: keep x with probability e^ε/(e^ε + k − 1). ε-LDP.

    A character outside the set is replaced by a uniform draw from the set.
    """

    name = "punctuation"

    def __init__(self, symbols: Sequence[str] = PUNCTUATION) -> None:
        self.symbols = list(dict.fromkeys(symbols))
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def _logits(self, text: str, eps: float) -> np.ndarray:
        logits = np.zeros(len(self.symbols))
        i = self.index.get(text)
        if i is not None:
            logits[i] = eps
        return logits

    def sample(self, texts: Sequence[str], eps: np.ndarray, rng: np.random.Generator) -> list[str]:
        eps = per_unit_epsilon(eps, len(texts))
        if not texts:
            return []
        logits = np.stack([self._logits(t, float(e)) for t, e in zip(texts, eps)])
        return [self.symbols[i] for i in gumbel_argmax(logits, rng)]

    def distribution(self, text: str, eps: float) -> tuple[list[str], np.ndarray]:
        eps_v = float(check_epsilon(eps)[0])
        return list(self.symbols), log_softmax(self._logits(text, eps_v))


# -- numbers with metric DP (FedCoT-A) ---------------------------------------------------

NumberKind = str  # "age" | "year" | "percent" | "amount" | "count"

#: Per kind: the public output grid, and the distance d(x, y) in "steps" of the metric.
#: Linear kinds measure in tens (ε per 10 years, 10 points); amounts and counts in
#: decades of magnitude (ε per factor of 10).
NUMBER_KINDS: tuple[str, ...] = ("age", "year", "percent", "amount", "count")
METRIC_UNITS: dict[str, str] = {
    "age": "10 years",
    "year": "10 years",
    "percent": "10 points",
    "amount": "a factor of 10",
    "count": "a factor of 10",
}


def _number_grid(kind: str) -> np.ndarray:
    if kind == "age":
        return np.arange(0, 111, dtype=np.float64)
    if kind == "year":
        return np.arange(1900, 2101, dtype=np.float64)
    if kind == "percent":
        return np.arange(0, 101, dtype=np.float64)
    return default_number_grid()


def _log_cell_widths(kind: str, grid: np.ndarray) -> np.ndarray:
    """log of each grid point's share of the metric's axis (its cell width in d).

    The count and amount grids are denser per decade at large values (0..99, then 200 points
    per decade); weighting each point by its width makes the draw a discretised Laplace on
    the log axis, so a stand-in is as likely one decade below as one above instead of being
    pulled toward the dense top of the grid. A public weight that does not depend on the
    input leaves the metric-DP bound unchanged.
    """
    axis = np.log10(1.0 + grid) if kind in ("amount", "count") else grid / 10.0
    return np.log(np.gradient(axis))


class MagnitudeMechanism:
    """Metric DP for numbers: P(y | x) ∝ w(y) · exp(−ε · d(x, y) / 2) on a public grid per
    kind, w(y) the width of y's cell on the metric's axis (:func:`_log_cell_widths`).

    d is |x − y| / 10 for ages, years and percentages and |log10(1+x) − log10(1+y)| for
    amounts and counts, so for any two inputs P(y|x) / P(y|x') ≤ exp(ε · d(x, x')): an
    attacker learns the magnitude only up to the noise (ε per 10 years, per factor of 10).
    The output keeps the kind and the shape (decimals, separators); decimal digits are
    uniform. Sampling is by inverse CDF with one uniform per draw.
    """

    name = "magnitude"

    def __init__(self) -> None:
        self.grids = {k: _number_grid(k) for k in NUMBER_KINDS}
        self.log_weights = {k: _log_cell_widths(k, g) for k, g in self.grids.items()}

    @staticmethod
    def distance(kind: str, x: float, grid: np.ndarray) -> np.ndarray:
        if kind in ("amount", "count"):
            return np.abs(np.log10(1.0 + max(x, 0.0)) - np.log10(1.0 + grid))
        return np.abs(x - grid) / 10.0

    def log_probs(self, kind: str, value: float, eps: float) -> np.ndarray:
        """Exact log P(y | x = value) over ``self.grids[kind]``."""
        eps_v = float(check_epsilon(eps)[0])
        grid = self.grids[kind]
        return log_softmax(self.log_weights[kind] - eps_v * self.distance(kind, value, grid) / 2.0)

    def sample(self, kind: str, value: float, eps: float, u: float) -> float:
        """The grid value drawn for ``value`` with uniform ``u`` in [0, 1)."""
        p = np.exp(self.log_probs(kind, value, eps))
        return float(self.grids[kind][_invert(np.cumsum(p), u)])
