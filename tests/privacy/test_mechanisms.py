"""Mechanisms against their exact distributions, on small spaces with known geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcot.errors import ConfigError
from fedcot.privacy.mechanisms import (
    ExponentialMechanism,
    NumericMechanism,
    PunctuationMechanism,
    RantextMechanism,
    TopKMechanism,
    _nested_set_probs,
    parse_unit_number,
)
from fedcot.privacy.space import EmbeddingSpace

WORDS = ["cat", "dog", "fox", "car", "bus", "tree"]
VECS = np.array(
    [[0.0, 0.0], [0.3, 0.1], [0.5, -0.2], [3.0, 3.0], [3.2, 2.7], [-2.0, 4.0]], dtype=np.float32
)
N = 40_000


@pytest.fixture()
def space():
    return EmbeddingSpace(list(WORDS), VECS.copy())


def tv(p, q):
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def chi_square_ok(counts, probs, z=3.72):
    """Pearson chi-square goodness of fit at p ≈ 1e-4 (cells with expected < 5 pooled)."""
    counts, probs = np.asarray(counts, float), np.asarray(probs, float)
    n = counts.sum()
    expected = probs * n
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    # Wilson–Hilferty approximation of the chi-square quantile.
    crit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat < crit


def empirical(outputs, support):
    idx = {w: i for i, w in enumerate(support)}
    counts = np.zeros(len(support))
    for o in outputs:
        counts[idx[o]] += 1
    return counts / len(outputs)


def hand_exponential(space, x, eps):
    d = np.linalg.norm(VECS - VECS[WORDS.index(x)], axis=1)
    u = -np.minimum(d, space.diameter) / space.diameter
    w = np.exp(eps * u / 2)
    return w / w.sum()


def test_space_utility_is_bounded(space):
    far = np.array([[1e4, -1e4], [0.0, 0.0]], dtype=np.float32)
    u = space.utilities(far)
    assert u.min() >= -1.0 and u.max() <= 0.0
    assert u[0].max() == -1.0  # clipped: a far-away unit is at "distance D" from everything
    true_diam = max(np.linalg.norm(a - b) for a in VECS for b in VECS)
    assert space.diameter >= true_diam - 1e-5


@pytest.mark.parametrize("eps", [0.5, 3.0, 10.0])
def test_exponential_matches_exact_distribution(space, eps):
    mech = ExponentialMechanism(space)
    expected = hand_exponential(space, "cat", eps)
    idx, logp = mech.index_distribution("cat", eps)
    assert np.allclose(np.exp(logp)[np.argsort(idx)], expected, atol=1e-6)
    out = mech.sample(["cat"] * N, np.full(N, eps), np.random.default_rng(1))
    assert tv(empirical(out, WORDS), expected) < 0.01


def test_exponential_is_eps_ldp(space):
    mech = ExponentialMechanism(space)
    for eps in (0.5, 2.0, 7.0):
        rows = {x: mech.index_distribution(x, eps)[1] for x in WORDS}
        worst = max(np.max(rows[a] - rows[b]) for a in WORDS for b in WORDS)
        assert worst <= eps + 1e-9
        assert worst > 0.3 * eps  # and the bound is not vacuous on this space


def test_limits_of_epsilon(space):
    mech = ExponentialMechanism(space)
    rng = np.random.default_rng(0)
    assert mech.sample(WORDS, np.full(len(WORDS), 1e6), rng) == WORDS  # ε → ∞: identity
    out = mech.sample(["cat"] * N, np.full(N, 1e-6), rng)  # ε → 0: uniform
    assert tv(empirical(out, WORDS), np.full(6, 1 / 6)) < 0.01


def test_seeds_reproduce(space):
    mech = ExponentialMechanism(space)
    a = mech.sample(WORDS * 50, np.full(300, 2.0), np.random.default_rng(5))
    b = mech.sample(WORDS * 50, np.full(300, 2.0), np.random.default_rng(5))
    c = mech.sample(WORDS * 50, np.full(300, 2.0), np.random.default_rng(6))
    assert a == b and a != c


def test_topk_support_and_distribution(space):
    mech = TopKMechanism(space, k=3)
    idx, logp = mech.index_distribution("cat", 4.0)
    assert [WORDS[i] for i in idx] == ["cat", "dog", "fox"]
    full = hand_exponential(space, "cat", 4.0)[:3]
    assert np.allclose(np.exp(logp), full / full.sum(), atol=1e-6)
    out = mech.sample(["cat"] * N, np.full(N, 4.0), np.random.default_rng(2))
    assert set(out) <= {"cat", "dog", "fox"}
    assert tv(empirical(out, WORDS[:3]), full / full.sum()) < 0.01
    # log_likelihood is the same distribution seen from the attacker's side.
    ll = mech.log_likelihood(WORDS.index("fox"), VECS, 4.0)
    assert ll[0] == pytest.approx(logp[2]) and ll[5] == -np.inf  # "fox" is not near "tree"


def test_exponential_log_likelihood_matches_distribution(space):
    mech = ExponentialMechanism(space)
    for y in range(len(WORDS)):
        ll = mech.log_likelihood(y, VECS, 3.0)
        for x, w in enumerate(WORDS):
            assert ll[x] == pytest.approx(mech.index_distribution(w, 3.0)[1][y], abs=1e-6)


def test_rantext_nested_sets_formula():
    cos = np.array([1.0, 0.8, 0.5, -0.2])
    thr = np.array([0.9, 0.7, 0.4, 0.4, 2.0])  # last one: empty set → most similar
    eps = 2.0
    w = np.exp(eps * cos / 4)
    expected = (
        np.array([1, 0, 0, 0]) * 1
        + np.array([w[0], w[1], 0, 0]) / (w[0] + w[1])
        + 2 * np.array([w[0], w[1], w[2], 0]) / (w[0] + w[1] + w[2])
        + np.array([1, 0, 0, 0])
    ) / 5
    assert np.allclose(_nested_set_probs(cos, thr, eps), expected)


def test_rantext_sampler_matches_its_distribution():
    # Cosine geometry needs vectors away from the origin.
    space = EmbeddingSpace(list(WORDS), VECS + np.array([5.0, 1.0], dtype=np.float32))
    mech = RantextMechanism(space, noise_samples=20_000)
    for x, eps in (("cat", 1.0), ("dog", 6.0)):
        _, logp = mech.index_distribution(x, eps, rng=np.random.default_rng(3))
        out = mech.sample([x] * N, np.full(N, eps), np.random.default_rng(4))
        assert tv(empirical(out, WORDS), np.exp(logp)) < 0.015
    # A larger ε shrinks the adjacency sets: more mass on the input itself.
    p_lo = np.exp(mech.index_distribution("cat", 0.5)[1])[0]
    p_hi = np.exp(mech.index_distribution("cat", 50.0)[1])[0]
    assert p_hi > p_lo


def test_numeric_mechanism():
    mech = NumericMechanism()
    assert parse_unit_number("1,250.75") == (1250.75, 2, True)
    assert parse_unit_number("2025") == (2025.0, 0, False)
    assert parse_unit_number("3.5") == (3.5, 1, False)
    assert parse_unit_number("1,250") == (1250.0, 0, True)
    support, logp = mech.distribution("57", 4.0)
    g = np.log10(1 + mech.grid)
    u = -np.minimum(np.abs(math.log10(58) - g), mech.range) / mech.range
    w = np.exp(4.0 * u / 2)
    assert np.allclose(np.exp(logp), w / w.sum())
    out = mech.sample(["57"] * N, np.full(N, 4.0), np.random.default_rng(7))
    emp = empirical(out, support)
    assert chi_square_ok(emp * N, w / w.sum())
    # ... and the same test rejects the distribution of another ε (it can fail).
    w_other = np.exp(2.0 * u / 2)
    assert not chi_square_ok(emp * N, w_other / w_other.sum())
    # digits never pass in the clear more often than the mechanism says (≈ P(57|57))
    assert emp[support.index("57")] == pytest.approx(
        float(np.exp(logp[support.index("57")])), abs=0.01
    )
    # shape is kept, digits are not
    shaped = mech.sample(["1,250.75"] * 200, np.full(200, 3.0), np.random.default_rng(8))
    assert all(len(s.split(".")[-1]) == 2 for s in shaped)
    assert sum(s == "1,250.75" for s in shaped) == 0
    worst = max(
        np.max(mech.distribution(a, 2.0)[1] - mech.distribution(b, 2.0)[1])
        for a in ("0", "7", "57", "2025", "99999")
        for b in ("0", "7", "57", "2025", "99999")
    )
    assert worst <= 2.0 + 1e-9


def test_punctuation_randomised_response():
    mech = PunctuationMechanism()
    k = len(mech.symbols)
    eps = 2.0
    keep = math.exp(eps) / (math.exp(eps) + k - 1)
    support, logp = mech.distribution(".", eps)
    assert math.exp(logp[support.index(".")]) == pytest.approx(keep)
    out = mech.sample(["."] * N, np.full(N, eps), np.random.default_rng(9))
    assert sum(o == "." for o in out) / N == pytest.approx(keep, abs=0.01)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_epsilon(space, bad):
    for mech in (ExponentialMechanism(space), TopKMechanism(space, 3), NumericMechanism()):
        with pytest.raises(ConfigError):
            mech.sample(
                ["cat" if not isinstance(mech, NumericMechanism) else "5"],
                np.array([bad]),
                np.random.default_rng(0),
            )


def test_adaptive_worst_case_is_eps_normal(space):
    # A unit flagged sensitive draws at ε_S, an unflagged one at ε_N ≥ ε_S: for any pair of
    # inputs and any output the log-ratio stays within (ε_S + ε_N)/2 ≤ ε_N.
    mech = ExponentialMechanism(space)
    eps_s, eps_n = 1.0, 4.0
    low = {x: mech.index_distribution(x, eps_s)[1] for x in WORDS}
    high = {x: mech.index_distribution(x, eps_n)[1] for x in WORDS}
    worst = max(np.max(np.abs(high[a] - low[b])) for a in WORDS for b in WORDS)
    assert worst <= (eps_s + eps_n) / 2 + 1e-9 <= eps_n


def test_unknown_unit_without_embedder_is_a_clear_error(space):
    with pytest.raises(ConfigError, match="not a candidate") as info:
        ExponentialMechanism(space).sample(["zebra"], np.array([1.0]), np.random.default_rng(0))
    assert "from_model" in str(info.value)
