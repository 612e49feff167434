"""Public English word frequencies (from ``wordfreq``).

The table is public knowledge, so it serves two roles: the sensitivity detector treats
words that are rare in public text as potentially identifying, and the Bayes attack uses it
as the prior ``π(x)`` over the words a client might have written.

``wordfreq`` is imported lazily so that importing :mod:`fedcot.privacy` stays cheap and
works without it; the first lookup raises :class:`~fedcot.errors.MissingDependencyError`
if it is not installed.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import ModuleType

from fedcot.errors import MissingDependencyError

__all__ = ["common_words", "unigram_logprob", "zipf"]

_LANG = "en"
_LN10 = math.log(10.0)


def _wordfreq() -> ModuleType:
    try:
        import wordfreq
    except ImportError as exc:
        raise MissingDependencyError(
            "word frequencies need the 'wordfreq' package, which is not installed",
            hint="pip install wordfreq",
        ) from exc
    return wordfreq


@lru_cache(maxsize=1)
def _wordlist() -> str:
    """``"large"`` where wordfreq ships a large English list (it does), else ``"best"``."""
    wf = _wordfreq()
    return "large" if _LANG in wf.available_languages("large") else "best"


@lru_cache(maxsize=200_000)
def zipf(word: str) -> float:
    """Zipf frequency (log10 of occurrences per billion words) of ``word`` in English.

    The word is lower-cased first; unknown words give ``0.0``. ``"the"`` is about 7.7, an
    everyday word 4-6, a rare one below 3.
    """
    wf = _wordfreq()
    return float(wf.zipf_frequency(word.lower(), _LANG, wordlist=_wordlist()))


def unigram_logprob(word: str, floor_zipf: float = 1.0) -> float:
    """Natural-log unigram probability of ``word``: ``log(10 ** (zipf - 9))``.

    This is the public prior ``π(x)`` of the Bayes attack. Unknown words, and any word
    rarer than ``floor_zipf``, get the probability of ``floor_zipf``, so the prior never
    puts zero mass on a word and never ranks a known word below an unknown one.
    """
    z = max(zipf(word), floor_zipf)
    return (z - 9.0) * _LN10


@lru_cache(maxsize=64)
def _common_words(n: int, min_len: int) -> tuple[str, ...]:
    wf = _wordfreq()
    out: list[str] = []
    fetch = max(2 * n, 100)
    while True:
        ranked = wf.top_n_list(_LANG, fetch, wordlist=_wordlist())
        out = [w for w in ranked if w.isalpha() and len(w) >= min_len][:n]
        # The filter drops entries such as "don't" or digits, so fetch more until n survive
        # or the list is exhausted.
        if len(out) >= n or len(ranked) < fetch:
            return tuple(out)
        fetch *= 2


def common_words(n: int, min_len: int = 1) -> list[str]:
    """The ``n`` most frequent English words, most frequent first.

    Only purely alphabetic words at least ``min_len`` characters long are kept ("don't"
    and "2" are not words for this purpose).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    return list(_common_words(n, min_len))
