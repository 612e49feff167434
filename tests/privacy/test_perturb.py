"""The Perturber front door: routing, consistency, accounting, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcot.errors import ConfigError
from fedcot.privacy.accountant import PrivacyAccountant
from fedcot.privacy.mechanisms import ExponentialMechanism, TopKMechanism
from fedcot.privacy.perturb import SEED_WARNING, PerturbConfig, Perturber
from fedcot.privacy.sensitivity import Entity
from fedcot.privacy.space import EmbeddingSpace
from fedcot.privacy.units import join_units, split_units

from tiny_models import hash_embedder

# Seeds below are on purpose (exact reproducibility); the warning is tested on its own.
pytestmark = pytest.mark.filterwarnings("ignore:privacy.seed is set")

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


class CapitalsAreEntities:
    """A scripted detector: capitalised words are people, numbers are numbers."""

    def entities(self, text):
        out = []
        for u in split_units(text):
            if u.kind == "word" and u.text[:1].isupper():
                out.append(Entity(u.start, u.end, "person", u.text))
            elif u.kind == "number":
                out.append(Entity(u.start, u.end, "number", u.text))
        return out


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


def test_adaptive_keeps_other_words_and_bills_only_metric_numbers(space):
    # Seeded so that no surrogate lands on its original by chance ("Alice" is a Faker name).
    p = Perturber(None, strategy="adaptive", epsilon=1.0, detector=CapitalsAreEntities(), seed=11)
    r = p.perturb([TEXT], ids=["r1"])[0]
    # Non-sensitive words and punctuation reach the server unchanged; entities do not.
    for kept in ("paid", "rent", "and", "tax."):
        assert kept in r.text
    assert "Alice" not in r.text and "Bob" not in r.text and "1,250" not in r.text.split()
    led = p.accountant.prompts["r1"]
    assert led.epsilon == 0.0  # no ε-LDP draw at all
    assert led.disclosed["person"] == 4  # Alice, EUR, Alice, Bob: one entry per occurrence
    # "1,250 EUR": an amount (the currency after it), ε per factor of 10.
    assert led.metric["amount"].draws == 1 and led.metric["amount"].epsilon_sum == 1.0
    assert led.metric_units["amount"] == "a factor of 10"
    # Consistent: the same name gets the same surrogate twice.
    alices = [d.output for d in r.units if d.original == "Alice"]
    assert len(alices) == 2 and alices[0] == alices[1]


def test_adaptive_with_an_exponential_base_bills_epsilon_normal(space):
    p = Perturber(
        ExponentialMechanism(space),
        strategy="adaptive",
        epsilon=1.0,
        epsilon_normal=4.0,
        detector=CapitalsAreEntities(),
        prompt_budget=10.0,
    )
    r = p.perturb([TEXT], ids=["r1"])[0]
    normal = [d for d in r.units if d.sensitive is None and d.kind == "word"]
    assert {d.original for d in normal} == {"paid", "rent", "and", "tax"}
    led = p.accountant.prompts["r1"]
    assert led.ldp["word"].draws == 4
    assert led.epsilon == pytest.approx(10.0)  # 4 × 4 = 16, capped at the prompt budget


def test_topk_and_rantext_are_not_billed_as_epsilon(space):
    p = Perturber(TopKMechanism(space, 4), strategy="topk", epsilon=2.0)
    p.perturb([TEXT], ids=["t"])
    led = p.accountant.prompts["t"]
    assert "word" not in led.ldp and led.deniability["topk"]["k"] == 4
    assert led.deniability["topk"]["draws"] == len(
        {"alice", "paid", "eur", "rent", "and", "bob", "tax"}
    )
    assert led.epsilon == pytest.approx(sum(c.epsilon_sum for c in led.ldp.values()))
    assert set(led.ldp) == {"number", "punct"}  # these two mechanisms are ε-LDP


def test_randomness_comes_from_the_os_unless_seeded(space):
    mech = ExponentialMechanism(space)
    texts = [TEXT] * 4
    a = Perturber(mech, strategy="exponential", epsilon=0.5).perturb(texts)
    b = Perturber(mech, strategy="exponential", epsilon=0.5).perturb(texts)
    assert [x.text for x in a] != [x.text for x in b]  # 16 words at ε = 0.5: never all equal
    with pytest.warns(UserWarning, match="replay"):
        s1 = Perturber(mech, strategy="exponential", epsilon=0.5, seed=7)
    with pytest.warns(UserWarning):
        s2 = Perturber(mech, strategy="exponential", epsilon=0.5, seed=7)
    assert [x.text for x in s1.perturb(texts)] == [x.text for x in s2.perturb(texts)]
    assert "not for private data" in s1.accountant.summary()["randomness"]
    assert SEED_WARNING.startswith("privacy.seed")
    assert PerturbConfig().seed is None
    from fedcot.cot.config import FedCoTConfig

    assert FedCoTConfig(seed=5).privacy.seed is None  # the run seed never seeds privacy


def test_accountant_by_hand(tmp_path):
    acc = PrivacyAccountant()
    acc.charge("a", "word", 2.0, draws=3)
    acc.charge("a", "number", 0.5, draws=2)
    acc.charge("b", "word", 1.0)
    acc.charge_metric("b", "age", 3.0, "10 years")
    acc.count_deniability("b", "topk", draws=5, k=32)
    acc.disclose("b", "person", 2)
    assert acc.prompt_total("a") == pytest.approx(7.0)
    assert acc.prompt_total("b") == pytest.approx(1.0)  # metric DP is never added to ε-LDP
    s = acc.summary()
    assert s["ldp_run_total"] == pytest.approx(8.0)
    assert s["ldp_per_prompt_max"] == pytest.approx(7.0)
    assert s["ldp_by_class"]["word"] == {"draws": 4, "epsilon_sum": 7.0, "epsilon_max": 2.0}
    assert s["metric_by_kind"]["age"] == {"draws": 1, "epsilon_sum": 3.0, "per": "10 years"}
    assert s["deniability"]["topk"] == {"draws": 5, "k": 32}
    assert s["disclosed_types"] == {"person": 2}
    path = acc.save(tmp_path / "ledger.json", {"config": {"epsilon": 3.0}})
    again = PrivacyAccountant.load(path)
    assert again.summary() == s
    with pytest.raises(ValueError):
        acc.charge("a", "word", math.inf)


def test_ledgers_are_strict_json(tmp_path, space):
    import json

    for p in (
        Perturber.from_config(PerturbConfig(strategy="none")),
        Perturber(None, strategy="adaptive", epsilon=1.0, detector=CapitalsAreEntities()),
        Perturber(TopKMechanism(space, 4), strategy="topk", epsilon=2.0),
    ):
        rows = [r.public() for r in p.perturb([TEXT, "bob paid"])]
        path = p.accountant.save(tmp_path / f"{p.strategy}.json")

        def strict(text):
            return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

        strict(path.read_text())
        for row in rows:
            strict(json.dumps(row, allow_nan=False))


def test_errors(space):
    mech = ExponentialMechanism(space)
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(ConfigError):
            Perturber(mech, strategy="exponential", epsilon=bad)
    p = Perturber(mech, strategy="exponential", epsilon=1.0)
    with pytest.raises(ConfigError, match="empty"):
        p.perturb(["ok", "   "])
    with pytest.raises(ConfigError, match="row-7 is empty"):
        p.perturb(["ok", ""], ids=["row-6", "row-7"])
    with pytest.raises(TypeError):
        p.perturb("not a list")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="detector"):
        Perturber(mech, strategy="adaptive", epsilon=1.0, epsilon_normal=2.0)
    for field, value in (("epsilon", 0), ("epsilon", float("nan")), ("epsilon", float("inf"))):
        with pytest.raises(ValueError, match=field):
            PerturbConfig(**{field: value})
    with pytest.raises(ValueError, match="epsilon_normal"):
        PerturbConfig(strategy="exponential", epsilon=3, epsilon_normal=1)


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
