"""Inversion attacks on small spaces where the right answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcot.privacy.attacks import (
    HypothesisSet,
    bayes_inversion,
    bayes_inversion_numbers,
    integer_part,
    nearest_neighbour_inversion,
    nearest_number_inversion,
    nested_set_logprobs,
    recovery_rate,
    verbatim_leakage,
)
from fedcot.privacy.mechanisms import (
    ExponentialMechanism,
    NumericMechanism,
    RantextMechanism,
    TopKMechanism,
    _nested_set_probs,
)
from fedcot.privacy.space import EmbeddingSpace

from tiny_models import hash_embedder

# Four well-separated clusters of three words in 2-D, every vector in its own direction.
CLUSTERS = {
    "red": (10.0, 1.0), "green": (10.5, 1.6), "blue": (9.6, 2.2),
    "cat": (-10.0, 1.5), "dog": (-10.4, 2.3), "cow": (-9.5, 0.7),
    "one": (1.0, 10.0), "two": (1.8, 10.6), "six": (0.3, 9.4),
    "oak": (1.2, -10.0), "elm": (2.0, -10.5), "ash": (0.5, -9.3),
}  # fmt: skip
WORDS = list(CLUSTERS)
PRIOR = {w: math.log(p) for w, p in zip(WORDS, np.linspace(12, 1, len(WORDS)) / 78)}
ORIGINALS = ["red", "cat", "two", "ash", "red", "dog", "six", "elm", "green", "oak"] * 3


def prior(w: str) -> float:
    return PRIOR.get(w, math.log(1e-6))


@pytest.fixture()
def space():
    vectors = np.array(list(CLUSTERS.values()), dtype=np.float32)
    return EmbeddingSpace(list(WORDS), vectors, embed_fn=hash_embedder(vectors.shape[1]))


@pytest.mark.parametrize("kind", ["exponential", "topk", "rantext"])
def test_huge_epsilon_bayes_recovers_everything(space, kind):
    mech = {
        "exponential": lambda: ExponentialMechanism(space),
        "topk": lambda: TopKMechanism(space, 4),
        "rantext": lambda: RantextMechanism(space),
    }[kind]()
    eps = 2000.0
    outputs = mech.sample(ORIGINALS, np.array([eps]), np.random.default_rng(0))
    assert outputs == ORIGINALS  # at this ε every unit comes back as itself
    guesses = bayes_inversion(mech, outputs, eps, WORDS, log_prior=prior)
    assert recovery_rate(ORIGINALS, guesses) == 1.0


def test_tiny_epsilon_bayes_falls_back_to_the_prior(space):
    mech = ExponentialMechanism(space)
    eps = 1e-6
    outputs = mech.sample(ORIGINALS, np.array([eps]), np.random.default_rng(1))
    guesses = bayes_inversion(mech, outputs, eps, WORDS, log_prior=prior)
    # The likelihood is flat: every guess is the prior's argmax ("red"), so the recovery
    # rate is the share of originals that are "red".
    assert set(guesses) == {"red"}
    assert recovery_rate(ORIGINALS, guesses) == pytest.approx(ORIGINALS.count("red") / 30)


def test_nn_inversion_of_identity_outputs(space):
    guesses = nearest_neighbour_inversion(space, [w.upper() for w in ORIGINALS], WORDS)
    assert recovery_rate(ORIGINALS, guesses) == 1.0
    # An output between clusters is mapped to the nearest hypothesis.
    hs = HypothesisSet(space, ["cat", "red"])
    assert nearest_neighbour_inversion(space, ["green", "cow"], hs) == ["red", "cat"]


def test_bayes_by_hand_three_words():
    # a = 0, b = 1, c = 3 on a line. Centre 4/3, largest distance to it 5/3, so D = 10/3
    # and u(x, y) = -|x - y| / D. At ε = 4 the exponential mechanism's logits are
    # (ε/2)·u = -0.6·|x - y|.
    space = EmbeddingSpace(["a", "b", "c"], np.array([[0.0], [1.0], [3.0]], np.float32))
    pos = {"a": 0.0, "b": 1.0, "c": 3.0}

    def lik(y, x):
        z = sum(math.exp(-0.6 * abs(pos[x] - pos[v])) for v in pos)
        return math.exp(-0.6 * abs(pos[x] - pos[y])) / z

    # P(b | a) = e^-0.6 / (1 + e^-0.6 + e^-1.8) = 0.3202
    # P(b | b) = 1 / (e^-0.6 + 1 + e^-1.2)      = 0.5405
    # P(b | c) = e^-1.2 / (e^-1.8 + e^-1.2 + 1) = 0.2054
    assert lik("b", "a") == pytest.approx(0.3202, abs=1e-4)
    assert lik("b", "b") == pytest.approx(0.5405, abs=1e-4)
    assert lik("b", "c") == pytest.approx(0.2054, abs=1e-4)
    mech = ExponentialMechanism(space)
    np.testing.assert_allclose(
        np.exp(mech.log_likelihood(1, space.vectors, 4.0)),
        [lik("b", x) for x in "abc"],
        rtol=1e-5,
    )
    uniform = {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    skewed_a = {"a": 0.7, "b": 0.2, "c": 0.1}  # 0.2241 vs 0.1081 vs 0.0205 → a
    skewed_c = {"a": 0.1, "b": 0.1, "c": 0.8}  # 0.0320 vs 0.0541 vs 0.1643 → c
    for pri, want_b, want_c in ((uniform, "b", "c"), (skewed_a, "a", "c"), (skewed_c, "c", "c")):
        guesses = bayes_inversion(
            mech, ["b", "c"], 4.0, ["a", "b", "c"], log_prior=lambda w, p=pri: math.log(p[w])
        )
        assert guesses == [want_b, want_c]


class _SlowExponential(ExponentialMechanism):
    def log_likelihood(self, y, hypotheses, eps):
        return super().log_likelihood(y, hypotheses, eps)


class _SlowTopK(TopKMechanism):
    def log_likelihood(self, y, hypotheses, eps):
        return super().log_likelihood(y, hypotheses, eps)


@pytest.mark.parametrize("kind", ["exponential", "topk"])
def test_fast_paths_equal_mechanism_log_likelihood(kind):
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(60)]
    space = EmbeddingSpace(
        words, rng.normal(size=(60, 6)).astype(np.float32), embed_fn=hash_embedder(6)
    )
    fast, slow = (
        (ExponentialMechanism(space), _SlowExponential(space))
        if kind == "exponential"
        else (TopKMechanism(space, 8), _SlowTopK(space, 8))
    )
    pri = {w: float(v) for w, v in zip(words, rng.normal(size=60))}
    originals = list(rng.choice(words, 200))
    hyps = [*words, "stranger"]  # a corpus original outside the space
    for eps in (0.5, 5.0, 40.0):
        outputs = fast.sample(originals, np.array([eps]), rng)
        a = bayes_inversion(fast, outputs, eps, hyps, log_prior=lambda w: pri.get(w, -5.0))
        b = bayes_inversion(slow, outputs, eps, hyps, log_prior=lambda w: pri.get(w, -5.0))
        assert a == b


def test_shared_hypothesis_set_caches_and_prior(space):
    hs = HypothesisSet.for_corpus(space, ["Zanzibar", "red"], log_prior=prior)
    assert len(hs) == len(WORDS) + 1 and hs.words[-1] == "zanzibar"
    small = HypothesisSet.for_corpus(space, ["Zanzibar"], max_hypotheses=3, log_prior=prior)
    assert small.words == ["red", "green", "blue", "zanzibar"]  # top-3 prior + originals
    mech = TopKMechanism(space, 4)
    g1 = bayes_inversion(mech, ["red", "cat"], 5.0, hs)
    g2 = bayes_inversion(mech, ["red", "cat"], 5.0, hs)
    assert g1 == g2 and len(hs._guesses) == 2
    # An output that no word mechanism can produce is guessed as itself.
    assert bayes_inversion(mech, ["Qwerty"], 5.0, hs) == ["Qwerty"]
    with pytest.raises(ValueError, match="different embedding space"):
        other = EmbeddingSpace(["x", "y"], np.eye(2, dtype=np.float32))
        bayes_inversion(TopKMechanism(other, 2), ["x"], 1.0, hs)


def test_rantext_estimator_matches_the_mechanism():
    rng = np.random.default_rng(1)
    cos = rng.uniform(-1, 1, (4, 120))
    thr = rng.uniform(-0.6, 1.1, (4, 80))  # some thresholds above every cosine: empty sets
    rows = np.repeat(np.arange(4), 120)
    cols = np.tile(np.arange(120), 4)
    ours = nested_set_logprobs(cos, thr, 3.0 / 4.0, rows, cols).reshape(4, 120)
    ref = np.stack([_nested_set_probs(cos[r], thr[r], 3.0) for r in range(4)])
    np.testing.assert_allclose(np.exp(ours), ref, rtol=1e-9, atol=1e-250)
    np.testing.assert_allclose(np.exp(ours).sum(axis=1), 1.0)


def test_numbers_attack():
    mech = NumericMechanism()
    originals = ["3", "250", "1,250.75", "40000", "7", "250"]
    outputs = mech.sample(originals, np.array([5000.0]), np.random.default_rng(0))
    hyps = ["3", "7", "250", "1,250.75", "40000", "90"]
    guesses = bayes_inversion_numbers(mech, outputs, 5000.0, hyps)
    assert [integer_part(g) for g in guesses] == [integer_part(o) for o in originals]
    # By hand: from output 12, h = 10 is closer than h = 1000 on the log scale.
    assert bayes_inversion_numbers(mech, ["12"], 3.0, ["1000", "10"]) == ["10"]
    assert bayes_inversion_numbers(mech, ["1,900.25"], 3.0, ["10", "2,000"]) == ["2,000"]
    assert nearest_number_inversion(["12", "900"], ["10", "1,000"]) == ["10", "1,000"]
    assert integer_part("1,250.75") == 1250 and integer_part("abc") is None


def test_recovery_rate_by_hand():
    orig = ["Alice", "paid", "rent", "Bob"]
    guess = ["alice", "paid", "tax", "Carol"]
    assert recovery_rate(orig, guess) == 0.5
    assert recovery_rate(orig, guess, mask=[True, False, False, True]) == 0.5
    assert recovery_rate(orig, guess, mask=[False, True, True, False]) == 0.5
    assert recovery_rate(orig, guess, mask=[False, False, True, True]) == 0.0
    assert math.isnan(recovery_rate(orig, guess, mask=[False] * 4))
    with pytest.raises(ValueError):
        recovery_rate(orig, guess[:2])


def test_verbatim_leakage_by_hand():
    original = "Maria Keller (34) lives in Graz."
    spans = [
        {"start": 0, "end": 12, "kind": "name", "text": "Maria Keller"},
        {"start": 14, "end": 16, "kind": "age", "text": "34"},
        {"start": 27, "end": 31, "kind": "city", "text": "Graz"},
    ]
    assert verbatim_leakage(original, original, spans) == (3, 3)
    # Only "Graz" survives; "34" inside "1,340" and "Maria" alone do not count.
    assert verbatim_leakage(original, "Maria Smith (1,340) lives in Graz.", spans) == (1, 3)
    assert verbatim_leakage(original, "Anna Keller (34) lives in Grazia.", spans) == (1, 3)
    assert verbatim_leakage(original, "Anna (34,500) in Graz.", spans) == (1, 3)
    assert verbatim_leakage(original, "Anna (2.34) in Graz, 34.", spans) == (2, 3)
    assert verbatim_leakage(original, "x", []) == (0, 0)
    with pytest.raises(ValueError, match="does not match"):
        verbatim_leakage(original, original, [{"start": 0, "end": 3, "text": "Bob"}])
