"""The Perturber front door: routing, consistency, accounting, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcot.errors import ConfigError
from fedcot.privacy.accountant import PrivacyAccountant
from fedcot.privacy.mechanisms import ExponentialMechanism, TopKMechanism
from fedcot.privacy.perturb import PerturbConfig, Perturber
from fedcot.privacy.space import EmbeddingSpace
from fedcot.privacy.units import join_units, split_units

from tiny_models import hash_embedder

WORDS = ["alice", "bob", "paid", "the", "rent", "for", "and", "tax", "carol", "money"]


@pytest.fixture()
def space():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(WORDS), 8)).astype(np.float32)
    return EmbeddingSpace(list(WORDS), vectors, embed_fn=hash_embedder(8))


class SpyWords(ExponentialMechanism):
    def __init__(self, space):
        super().__init__(space)
        self.calls: list[list[str]] = []

    def sample(self, texts, eps, rng):
        self.calls.append(list(texts))
        return super().sample(texts, eps, rng)


class CapitalsAreSensitive:
    def detect(self, text, units=None):
        units = units or split_units(text)
        return [
            "proper_noun"
            if u.kind == "word" and u.text[:1].isupper()
            else "number"
            if u.kind == "number"
            else None
            for u in units
        ]


TEXT = "Alice paid 1,250 EUR rent; Alice and Bob paid tax."


def test_every_unit_goes_through_a_mechanism(space):
    spy = SpyWords(space)
    p = Perturber(spy, strategy="exponential", epsilon=1e6, consistent=False)
    r = p.perturb([TEXT])[0]
    words = [u.text.lower() for u in split_units(TEXT) if u.kind == "word"]
    assert spy.calls == [words]  # all words, in one batched call, including unknown "EUR"
    assert len(r.units) == sum(u.private for u in split_units(TEXT))
    # Whitespace layout is kept; at ε → ∞ known words come back, unknown ones cannot.
    assert [u.text for u in split_units(r.text) if u.kind == "space"] == [
        u.text for u in split_units(TEXT) if u.kind == "space"
    ]
    assert "EUR" not in r.text and "Alice paid" in r.text
    assert all(d.output != d.original for d in r.units if d.kind == "number")


def test_consistency_and_mapping(space):
    p = Perturber(ExponentialMechanism(space), strategy="exponential", epsilon=0.5, seed=3)
    r = p.perturb([TEXT])[0]
    outs = [d.output for d in r.units if d.original == "Alice"]
    assert len(outs) == 2 and outs[0] == outs[1]
    assert r.mapping["Alice"] == outs[0]
    assert r.inverse[r.mapping["Bob"]] in ("Bob", "Alice")  # a collision keeps the first
    # Charged once per distinct unit: 8 distinct words/numbers/punct … counted by hand:
    distinct = {(u.kind, u.text.lower()) for u in split_units(TEXT) if u.private}
    assert r.epsilon == pytest.approx(0.5 * len(distinct))
    q = Perturber(
        ExponentialMechanism(space), strategy="exponential", epsilon=0.5, consistent=False
    )
    n_units = sum(u.private for u in split_units(TEXT))
    assert q.perturb([TEXT])[0].epsilon == pytest.approx(0.5 * n_units)


def test_seeded_and_batched_equals_reproducible(space):
    a = Perturber(TopKMechanism(space, 4), strategy="topk", epsilon=2.0, seed=9)
    b = Perturber(TopKMechanism(space, 4), strategy="topk", epsilon=2.0, seed=9)
    texts = [TEXT, "Bob paid the money.", "Carol and Alice"]
    assert [r.text for r in a.perturb(texts)] == [r.text for r in b.perturb(texts)]


def test_adaptive_epsilon_split_and_budget(space):
    p = Perturber(
        ExponentialMechanism(space),
        strategy="adaptive",
        epsilon=1.0,
        epsilon_normal=4.0,
        detector=CapitalsAreSensitive(),
    )
    r = p.perturb([TEXT], ids=["r1"])[0]
    for d in r.units:
        expect = 1.0 if (d.original[:1].isupper() or d.kind == "number") else 4.0
        assert d.epsilon == expect, d
    by_class = p.accountant.prompts["r1"].by_class
    assert by_class["word:sensitive"].draws == 3  # Alice, EUR, Bob
    assert by_class["number:sensitive"].draws == 1
    assert by_class["word"].epsilon_sum == pytest.approx(4.0 * 4)  # paid, rent, and, tax
    capped = Perturber(
        ExponentialMechanism(space),
        strategy="adaptive",
        epsilon=1.0,
        epsilon_normal=4.0,
        detector=CapitalsAreSensitive(),
        prompt_budget=10.0,
    )
    rc = capped.perturb([TEXT])[0]
    assert rc.epsilon == pytest.approx(10.0)
    ratio = {d.epsilon for d in rc.units if d.sensitive} | {
        d.epsilon for d in rc.units if not d.sensitive
    }
    assert max(ratio) / min(ratio) == pytest.approx(4.0)


def test_accountant_by_hand():
    acc = PrivacyAccountant()
    acc.charge("a", "word", 2.0, draws=3)
    acc.charge("a", "number:sensitive", 0.5, draws=2)
    acc.charge("b", "word", 1.0)
    assert acc.prompt_total("a") == pytest.approx(7.0)
    assert acc.prompt_total("b") == pytest.approx(1.0)
    s = acc.summary()
    assert s["draws"] == 6 and s["run_total"] == pytest.approx(8.0)
    assert s["per_prompt_max"] == pytest.approx(7.0) and s["per_prompt_mean"] == pytest.approx(4.0)
    assert s["by_class"]["word"] == {"draws": 4, "epsilon_sum": 7.0, "epsilon_max": 2.0}
    again = PrivacyAccountant.from_dict(acc.to_dict())
    assert again.summary() == s
    with pytest.raises(ValueError):
        acc.charge("a", "word", math.inf)


def test_errors(space):
    mech = ExponentialMechanism(space)
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(ConfigError):
            Perturber(mech, strategy="exponential", epsilon=bad)
    p = Perturber(mech, strategy="exponential", epsilon=1.0)
    with pytest.raises(ConfigError, match="empty"):
        p.perturb(["ok", "   "])
    with pytest.raises(TypeError):
        p.perturb("not a list")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="detector"):
        Perturber(mech, strategy="adaptive", epsilon=1.0, epsilon_normal=2.0)
    with pytest.raises(ConfigError, match="epsilon_normal"):
        Perturber(
            mech,
            strategy="adaptive",
            epsilon=2.0,
            epsilon_normal=1.0,
            detector=CapitalsAreSensitive(),
        )
    for field, value in (("epsilon", 0), ("epsilon", float("nan")), ("epsilon", float("inf"))):
        with pytest.raises(ValueError, match=field):
            PerturbConfig(**{field: value})
    with pytest.raises(ValueError, match="epsilon_normal"):
        PerturbConfig(epsilon=3, epsilon_normal=1)


def test_none_strategy_is_identity():
    p = Perturber.from_config(PerturbConfig(strategy="none"))
    r = p.perturb([TEXT])[0]
    assert r.text == TEXT and r.epsilon == math.inf and p.accountant.summary()["draws"] == 0


def test_units_round_trip_property():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def check(s):
        assert join_units(split_units(s)) == s

    check()


def test_adaptive_routes_sensitive_words_to_their_own_mechanism(space):
    normal, sensitive = SpyWords(space), SpyWords(space)
    p = Perturber(
        normal,
        strategy="adaptive",
        sensitive_words=sensitive,
        epsilon=1.0,
        epsilon_normal=4.0,
        detector=CapitalsAreSensitive(),
    )
    p.perturb([TEXT])
    assert sorted(sensitive.calls[0]) == ["alice", "bob", "eur"]
    assert not {"alice", "bob", "eur"} & set(normal.calls[0])
