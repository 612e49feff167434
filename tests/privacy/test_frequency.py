"""Tests for the public word-frequency table (fedcot.privacy.frequency)."""

from __future__ import annotations

import math
import sys

import pytest

pytest.importorskip("wordfreq")

from fedcot.errors import MissingDependencyError
from fedcot.privacy.frequency import common_words, unigram_logprob, zipf


def test_zipf_known_and_unknown_words() -> None:
    assert zipf("the") > 7
    assert zipf("The") == zipf("the")  # case-insensitive
    assert 3 < zipf("house") < 7
    assert zipf("xqzvt") == 0.0


def test_unigram_logprob_orders_words_by_frequency() -> None:
    lp_the, lp_house = unigram_logprob("the"), unigram_logprob("house")
    lp_rare, lp_unknown = unigram_logprob("thoroughfare"), unigram_logprob("xqzvt")
    assert 0 > lp_the > lp_house > lp_rare > lp_unknown
    assert lp_the == pytest.approx(math.log(10 ** (zipf("the") - 9)))
    # Unknown words get the floor, a lower floor makes them less probable.
    assert lp_unknown == pytest.approx(math.log(10 ** (1.0 - 9)))
    assert unigram_logprob("xqzvt", floor_zipf=0.5) < lp_unknown


def test_common_words() -> None:
    words = common_words(100)
    assert len(words) == 100
    assert words[0] == "the"
    assert "the" in words and "and" in words
    assert all(w.isalpha() for w in words)
    assert len(set(words)) == 100
    long_words = common_words(50, min_len=4)
    assert len(long_words) == 50 and all(len(w) >= 4 and w.isalpha() for w in long_words)
    assert common_words(0) == []
    assert common_words(10) == words[:10]
    with pytest.raises(ValueError):
        common_words(-1)


def test_missing_wordfreq_raises_with_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # makes "import wordfreq" fail
    with pytest.raises(MissingDependencyError) as err:
        zipf("a-word-not-looked-up-before")
    assert err.value.hint == "pip install wordfreq"
