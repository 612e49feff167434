"""Attacks against candidate lists: the seed replay fails on default (OS-entropy) runs."""

from __future__ import annotations

import numpy as np
import pytest

from fedcot.privacy.mechanisms import ExponentialMechanism
from fedcot.privacy.perturb import Perturber
from fedcot.privacy.sensitivity import Entity
from fedcot.privacy.space import EmbeddingSpace
from fedcot.privacy.threats import build_targets, observed, replay_attack, run_threats
from fedcot.privacy.units import split_units

from tiny_models import hash_embedder

pytestmark = pytest.mark.filterwarnings("ignore:privacy.seed is set")

NAMES = ["anna", "boris", "carla", "dmitri", "elena", "farid", "greta", "hugo", "ines", "jonas",
         "karin", "liam"]  # fmt: skip
FILLER = ["met", "the", "doctor", "today", "and", "paid", "rent", "with", "a", "friend"]
SOURCES = [f"{NAMES[i % 12].title()} met the doctor today and paid rent with a friend."
           for i in range(24)]  # fmt: skip
SPANS = [[(0, len(NAMES[i % 12]), "person")] for i in range(24)]


@pytest.fixture(scope="module")
def space():
    # A vocabulary the size of a small real one, so that one uniform draw maps different
    # inputs to different outputs (as it does over SmolLM2's 49k words).
    words = NAMES + FILLER + [f"w{i}" for i in range(3000)]
    rng = np.random.default_rng(0)
    return EmbeddingSpace(words, rng.normal(size=(len(words), 8)).astype(np.float32),
                          embed_fn=hash_embedder(8))  # fmt: skip


class FirstWordIsAPerson:
    def entities(self, text):
        u = split_units(text)[0]
        return [Entity(u.start, u.end, "person", u.text)]


class Encoder:  # a stand-in for the sentence encoder: hashing is enough for the NN attack
    def encode(self, texts):
        return np.stack([hash_embedder(16)(t.lower()) for t in texts])


def exponential(space):
    base = Perturber(ExponentialMechanism(space), strategy="exponential", epsilon=3.0)
    return lambda seed: base.with_seed(seed)


def adaptive():
    base = Perturber(None, strategy="adaptive", epsilon=1.0, detector=FirstWordIsAPerson())
    return lambda seed: base.with_seed(seed)


def test_targets_hold_the_original_and_same_type_decoys():
    targets = build_targets(SOURCES, SPANS, candidates=6, seed=1)
    assert len(targets) == 24
    for t in targets:
        assert t.original in t.candidates and len(set(t.candidates)) == 6
        assert t.chance == pytest.approx(1 / 6)


@pytest.mark.parametrize("strategy", ["exponential", "adaptive"])
def test_seed_replay_recovers_a_seeded_run_and_fails_on_the_default(space, strategy):
    make = exponential(space) if strategy == "exponential" else adaptive()
    targets = build_targets(SOURCES, SPANS, candidates=6, seed=1)

    def recovery(client_seed):
        perts = [make(client_seed).perturb([s])[0] for s in SOURCES]
        outs = [observed(perts[t.text_index], t) for t in targets]
        guesses = replay_attack(targets, outs, SOURCES, make, assumed_seed=0)
        return np.mean([g == t.original for g, t in zip(guesses, targets)])

    default = np.mean([recovery(None) for _ in range(3)])
    assert default <= 2 / 6  # at most twice chance with OS entropy
    if strategy == "exponential":
        assert recovery(0) >= 0.75  # the old default seed: the server replays the draws


def test_run_threats_reports_every_attack(space):
    row = run_threats(
        "adaptive", 1.0, SOURCES, SPANS, adaptive(), encoder=Encoder(), candidates=6,
        max_targets=None, seed=5,  # the client's own seed, not the replayed 0: deterministic
    )  # fmt: skip
    assert row.targets == 24 and row.chance == pytest.approx(1 / 6)
    assert row.missed_words == 0.0 and row.repeated_words == 0.0  # every name replaced
    assert row.kept_words == 1.0  # every other word reaches the server
    for rate in (row.nn, row.bayes, row.replay):
        assert rate is not None and rate <= 2 / 6 + 0.15
    assert row.by_type["person"]["targets"] == 24


def test_layout_decoys_share_the_disclosed_shape():
    from fedcot.privacy.threats import layout

    texts = ["call +31 6 7336 1286", "call +44 7 7009 0012", "call 0113 496 0782"]
    spans = [[(5, len(t), "phone")] for t in texts]
    targets = build_targets(texts, spans, candidates=3, same_layout=True)
    assert len(targets) == 2  # the third phone has no decoy of its layout
    for t in targets:
        assert len({layout("phone", c) for c in t.candidates}) == 1
    assert layout("org", "St Agatha Hospital")[1].endswith("hospital")
