"""Decide which units of a text are sensitive, for mechanisms that spend less ε on them.

:class:`SensitivityDetector` labels every unit of :func:`~fedcot.privacy.units.split_units`
with a sensitive kind or ``None``. It combines, in order of precedence:

``term``
    the user's own list of sensitive terms (case-insensitive, whole units, multi-word);
``email``, ``iban``, ``phone``, ``id``, ``date``
    regular expressions run over the full text; every non-space unit a match overlaps gets
    the match's kind (so the ``.`` and ``@`` of an e-mail address are sensitive too);
``number``
    every number unit;
``proper_noun``
    capitalised words that are not capitalised merely because they start a sentence;
``rare``
    words whose public frequency (:func:`~fedcot.privacy.frequency.zipf`) is low, since
    rare words identify people and places better than common ones.

The detector is deliberately generic: it holds no lists of names or places.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fedcot.privacy.frequency import zipf
from fedcot.privacy.units import Unit, split_units

__all__ = ["SENSITIVE_KINDS", "SensitivityDetector"]

#: Kinds :meth:`SensitivityDetector.detect` may return.
SENSITIVE_KINDS: tuple[str, ...] = (
    "email",
    "phone",
    "iban",
    "id",
    "date",
    "number",
    "proper_noun",
    "rare",
    "term",
)

# Lower rank wins when several kinds apply to one unit.
_PRECEDENCE: tuple[str, ...] = (
    "term",
    "email",
    "iban",
    "phone",
    "id",
    "date",
    "number",
    "proper_noun",
    "rare",
)
_RANK = {k: i for i, k in enumerate(_PRECEDENCE)}

# A sentence-initial capitalised word counts as a proper noun when it is this rare in
# public English (the word is then unlikely to be an ordinary word that happens to start
# the sentence: "Maria went ..." vs "The man ...").
_START_RARE_ZIPF = 4.0
# Common first names ("Maria", "Diego") are too frequent for that rule. A sentence-initial
# word below this frequency is still a proper noun when a proper noun follows it directly
# ("Maria Keller") or when the same word is a proper noun elsewhere in the text. Function
# words ("The", "When", "Many") lie well above it, so "The Beatles" does not pull in "The".
_START_NAME_ZIPF = 5.0

# Capitalised words that are plainly not private: the pronoun I and its contractions, and
# honorifics / abbreviations that precede names (the name after them is what is private).
_NOT_PROPER = frozenset(
    {"i", "i'm", "i'd", "i'll", "i've", "mr", "mrs", "ms", "mx", "dr", "prof", "st", "jr", "sr"}
)

# A "." after these does not end a sentence, so the next word is not sentence-initial
# ("Dr. Keller", "Sept. 3"); single letters are treated the same ("J. Keller", "U.S.").
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "st", "jr", "sr", "mt", "vs", "etc", "no",
        "nr", "fig", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
        "nov", "dec", "e.g", "i.e", "approx", "dept", "inc", "ltd", "co", "corp",
    }
)  # fmt: skip
_TERMINATORS = frozenset(".!?")
# Punctuation that may sit between a sentence end and the next sentence's first word.
_OPENERS = frozenset("\"'“”‘’«»([{-–—*•")

# --------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------

_EMAIL_RE = re.compile(
    r"(?<![\w.%+\-])"
    r"[\w%+\-]+(?:\.[\w%+\-]+)*"  # local part: dot-separated atoms
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}"  # domain
    r"(?![\w\-])"
)

# Country code, check digits, then groups of four (letters only in the bank-code groups,
# "GB29 NWBK 6016 ..."), spaced or not; the total length is checked in code (15-34).
_IBAN_RE = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){1,2}(?: ?\d{4}){1,6}(?: ?\d{1,3})?"
    r"(?![A-Za-z0-9])"
)

# International: "+43 660 123 4567", "+1 (555) 123-4567", "+441234567890". Later groups need
# two digits so a stray "2" after the number is not swallowed; the digit count (7-15,
# E.164) is checked in code.
_PHONE_INTL_RE = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?(?:\(\d{1,4}\)|\d{2,10})){1,6}(?![\w])")
# National: "(555) 123-4567", "555-123-4567", "555.123.4567", "0660 1234567", "030/1234567".
_PHONE_NATIONAL_RE = re.compile(
    r"(?<![\w.\-/+])"
    r"(?:\(\d{2,5}\)[ .\-]?\d{3,4}[ .\-]\d{3,4}"
    r"|\d{3}([.\-])\d{3}\1\d{4}"
    r"|0\d{2,4}[ /]\d{5,9})"
    r"(?![\w\-/]|[.,]\d)"
)

# Prefixed codes: "CUST-4052541", "C-123456", "KD123456", passport-like "X1234567".
_ID_CODE_RE = re.compile(r"(?<![\w\-])[A-Z]{1,6}-?\d{5,12}(?![\w\-])")
# A value after an ID keyword: "ID 12-345-678", "Customer ID: CUST-4052541", "No. 4711-B".
# Only the value is marked: the keyword itself reveals nothing.
_ID_KEYWORD_RE = re.compile(
    r"(?:\b(?:ID|Id|No|Nr|Ref)\.?|#)[ \t]*:?[ \t]*"
    r"(?P<value>[A-Z0-9]+(?:[\-/][A-Z0-9]+)*)(?![\w\-])"
)
# US social-security-like 3-2-4 digit groups.
_ID_SSN_RE = re.compile(r"(?<![\w\-])\d{3}-\d{2}-\d{4}(?![\w\-])")

_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|"
    r"December|JANUARY|FEBRUARY|MARCH|APRIL|MAY|JUNE|JULY|AUGUST|SEPTEMBER|OCTOBER|"
    r"NOVEMBER|DECEMBER|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?)(?![\w])"
)
_WEEKDAY = (
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|"
    r"(?:Mon|Tues|Tue|Wed|Thurs|Thu|Fri|Sat|Sun)\.?)"
)
_DAY = r"(?:3[01]|[12]\d|0?[1-9])(?:st|nd|rd|th)?(?![\w])(?![.,]\d)"
_YEAR = r"\d{4}(?![\w])(?![.,]\d)"
# Month names are only a date next to a day or a year: "may" and "March" alone are words.
_DATE_WORDS_RE = re.compile(
    r"(?<![\w.,])"
    rf"(?:{_WEEKDAY},?\s+(?:the\s+)?)?"
    r"(?:"
    rf"{_DAY}(?:\s+of)?\s+{_MONTH}(?:,?\s+{_YEAR})?"  # 21 September 2025, 4th of March
    rf"|{_MONTH}\s+{_DAY}(?:,?\s+{_YEAR})?"  # March 4, 2025 / Sept. 3
    rf"|{_MONTH},?\s+{_YEAR}"  # September 2025
    r")"
)
# Numeric dates; ranges are checked in code. Dotted dates need a four-digit year so that
# version strings ("2.7.18") are not dates.
_DATE_ISO_RE = re.compile(
    r"(?<![\w.\-/])(?P<y>\d{4})(?P<s>[-/.])(?P<m>\d{1,2})(?P=s)(?P<d>\d{1,2})(?![\w\-/]|\.\d)"
)
_DATE_DMY_RE = re.compile(
    r"(?<![\w.\-/])(?P<a>\d{1,2})(?P<s>[-/.])(?P<b>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})"
    r"(?![\w\-/]|\.\d)"
)


def _iban_matches(text: str) -> Iterator[tuple[int, int]]:
    for m in _IBAN_RE.finditer(text):
        n = sum(c.isalnum() for c in m.group())
        if 15 <= n <= 34:
            yield m.span()


def _phone_matches(text: str) -> Iterator[tuple[int, int]]:
    for m in _PHONE_INTL_RE.finditer(text):
        start = m.start()
        groups = list(re.finditer(r"\(\d+\)|\d+", m.group()))
        digits = [sum(c.isdigit() for c in g.group()) for g in groups]
        # Drop trailing groups until the number fits E.164's 15 digits: what follows a
        # full phone number is other text.
        while len(groups) > 2 and sum(digits) > 15:
            groups.pop()
            digits.pop()
        if 7 <= sum(digits) <= 15:
            yield start, start + groups[-1].end()
    for m in _PHONE_NATIONAL_RE.finditer(text):
        yield m.span()


def _id_matches(text: str) -> Iterator[tuple[int, int]]:
    for m in _ID_CODE_RE.finditer(text):
        yield m.span()
    for m in _ID_KEYWORD_RE.finditer(text):
        value = m.group("value")
        if len(value) >= 4 and any(c.isdigit() for c in value):
            yield m.span("value")
    for m in _ID_SSN_RE.finditer(text):
        yield m.span()


def _valid_day_month(day: int, month: int) -> bool:
    return 1 <= day <= 31 and 1 <= month <= 12


def _date_matches(text: str) -> Iterator[tuple[int, int]]:
    for m in _DATE_WORDS_RE.finditer(text):
        yield m.span()
    for m in _DATE_ISO_RE.finditer(text):
        if _valid_day_month(int(m.group("d")), int(m.group("m"))):
            yield m.span()
    for m in _DATE_DMY_RE.finditer(text):
        if m.group("s") == "." and len(m.group("y")) != 4:
            continue
        a, b = int(m.group("a")), int(m.group("b"))
        if _valid_day_month(a, b) or _valid_day_month(b, a):  # day-first or month-first
            yield m.span()


def _pattern_matches(text: str) -> Iterator[tuple[str, int, int]]:
    for s, e in (m.span() for m in _EMAIL_RE.finditer(text)):
        yield "email", s, e
    for s, e in _iban_matches(text):
        yield "iban", s, e
    for s, e in _phone_matches(text):
        yield "phone", s, e
    for s, e in _id_matches(text):
        yield "id", s, e
    for s, e in _date_matches(text):
        yield "date", s, e


# --------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------


def _norm(word: str) -> str:
    return word.lower().replace("’", "'")


def _base(word: str) -> str:
    """Lower-cased word without a possessive ending ("Keller's" -> "keller")."""
    w = _norm(word)
    if w.endswith("'s") and len(w) > 2:
        return w[:-2]
    return w.rstrip("'")


def _word_zipf(word: str) -> float:
    """Public frequency of a word unit; a hyphenated compound is as common as its rarest part
    or as the compound itself, whichever is higher ("meat-filled" is not rare)."""
    base = _base(word)
    z = zipf(base)
    parts = [p for p in base.split("-") if p]
    if len(parts) > 1:
        z = max(z, min(zipf(p) for p in parts))
    return z


def _capitalised(word: str) -> bool:
    return len(word) >= 2 and word[0].isupper()


def _sentence_initial(units: Sequence[Unit], i: int) -> bool:
    """Whether word unit ``i`` starts a sentence (text start, new line, or after . ! ?)."""
    saw_space = False
    j = i - 1
    while j >= 0:
        u = units[j]
        if u.kind == "space":
            if "\n" in u.text:
                return True
            saw_space = True
        elif u.kind == "punct" and u.text in _OPENERS:
            pass
        elif u.kind == "punct" and u.text in _TERMINATORS:
            if not saw_space:
                return False  # "example.org", "3.5" or "x.y": no break after the dot
            if u.text == "." and j > 0 and units[j - 1].kind == "word":
                prev = _norm(units[j - 1].text)
                if len(prev) == 1 or prev in _ABBREVIATIONS:
                    return False
            return True
        else:
            return False
        j -= 1
    return True


def _term_units(term: str) -> tuple[str, ...]:
    return tuple(_norm(u.text) for u in split_units(term) if u.kind != "space")


# --------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------


@dataclass
class SensitivityDetector:
    """Label the units of a text as sensitive (with a kind) or not.

    Attributes:
        terms: the user's sensitive terms, matched case-insensitively on whole units
            ("Acme" matches "ACME" and "Acme's" but not "Acmesoft"); multi-word terms match
            the same units separated by any whitespace.
        rare_zipf: words whose public Zipf frequency is below this are ``"rare"``; 0
            disables the check.
        proper_nouns: detect capitalised proper nouns.
        numbers: every number unit is ``"number"``.
        patterns: run the e-mail, IBAN, phone, ID and date patterns.
    """

    terms: Sequence[str] = ()
    rare_zipf: float = 3.0
    proper_nouns: bool = True
    numbers: bool = True
    patterns: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.terms, str):
            raise TypeError("terms must be a sequence of strings, not a single string")
        for t in self.terms:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"terms must be non-empty strings, got {t!r}")
        if self.rare_zipf < 0:
            raise ValueError(f"rare_zipf must be >= 0, got {self.rare_zipf}")

    # -- public API ---------------------------------------------------------------------

    def detect(self, text: str, units: Sequence[Unit] | None = None) -> list[str | None]:
        """One entry per unit of ``split_units(text)``: its sensitive kind, or ``None``.

        ``units``, when given, must be ``split_units(text)`` (passed to avoid splitting
        twice); units that do not tile ``text`` raise :class:`ValueError`. Space units are
        always ``None``.
        """
        kinds, _ = self._label(text, units)
        return kinds

    def sensitive_mask(self, text: str, units: Sequence[Unit] | None = None) -> list[bool]:
        """``True`` for each unit :meth:`detect` labels sensitive."""
        return [k is not None for k in self.detect(text, units)]

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """Maximal ``(start, end, kind)`` character spans of sensitive text.

        Adjacent sensitive units of one kind form one span; whitespace joins them only
        inside one pattern or term match ("21 September 2025" is one span, "Maria Keller"
        two).
        """
        units = split_units(text)
        kinds, groups = self._label(text, units)
        out: list[tuple[int, int, str]] = []
        last: int | None = None  # index of the last unit in the open span
        for i, (u, k) in enumerate(zip(units, kinds)):
            if k is None:
                continue
            if out and last is not None and out[-1][2] == k:
                gap = units[last + 1 : i]
                same_match = groups[last] is not None and groups[last] == groups[i]
                if not gap or (same_match and all(g.kind == "space" for g in gap)):
                    out[-1] = (out[-1][0], u.end, k)
                    last = i
                    continue
            out.append((u.start, u.end, k))
            last = i
        return out

    # -- internals ----------------------------------------------------------------------

    def _label(
        self, text: str, units: Sequence[Unit] | None
    ) -> tuple[list[str | None], list[int | None]]:
        """Kinds per unit, and per unit the id of the pattern/term match that set its kind."""
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        if units is None:
            units = split_units(text)
        else:
            _check_units(text, units)
        kinds: list[str | None] = [None] * len(units)
        groups: list[int | None] = [None] * len(units)

        def mark(i: int, kind: str, group: int | None = None) -> None:
            cur = kinds[i]
            if cur is None or _RANK[kind] < _RANK[cur]:
                kinds[i] = kind
                groups[i] = group

        # Pattern and term matches are character ranges; map them to units by offset.
        starts = [u.start for u in units]
        for match_id, (kind, s, e) in enumerate(self._matches(text, units), start=1):
            i = _unit_at(starts, units, s)
            while i < len(units) and units[i].start < e:
                if units[i].kind != "space":
                    mark(i, kind, match_id)
                i += 1

        if self.numbers:
            for i, u in enumerate(units):
                if u.kind == "number":
                    mark(i, "number")
        if self.proper_nouns:
            for i in self._proper_noun_indices(units):
                mark(i, "proper_noun")
        if self.rare_zipf > 0:
            for i, u in enumerate(units):
                if u.kind == "word" and _word_zipf(u.text) < self.rare_zipf:
                    mark(i, "rare")
        return kinds, groups

    def _matches(self, text: str, units: Sequence[Unit]) -> Iterator[tuple[str, int, int]]:
        if self.terms:
            yield from self._term_matches(units)
        if self.patterns:
            yield from _pattern_matches(text)

    def _term_matches(self, units: Sequence[Unit]) -> Iterator[tuple[str, int, int]]:
        idx = [i for i, u in enumerate(units) if u.kind != "space"]
        norm = [_norm(units[i].text) for i in idx]
        for term in dict.fromkeys(_term_units(t) for t in self.terms):
            n = len(term)
            for p in range(len(norm) - n + 1):
                if norm[p : p + n - 1] != list(term[:-1]):
                    continue
                last = norm[p + n - 1]
                # Whole units only, but allow the possessive of the last one ("Acme's").
                if last == term[-1] or (
                    units[idx[p + n - 1]].kind == "word" and last == term[-1] + "'s"
                ):
                    yield "term", units[idx[p]].start, units[idx[p + n - 1]].end

    def _proper_noun_indices(self, units: Sequence[Unit]) -> set[int]:
        words = [i for i, u in enumerate(units) if u.kind == "word"]
        caps = [i for i in words if _capitalised(units[i].text)]
        caps = [i for i in caps if _base(units[i].text) not in _NOT_PROPER]
        initial = {i for i in caps if _sentence_initial(units, i)}

        found = {i for i in caps if i not in initial}
        found |= {i for i in initial if _word_zipf(units[i].text) < _START_RARE_ZIPF}
        pending = [i for i in initial if i not in found]
        pending = [i for i in pending if _word_zipf(units[i].text) < _START_NAME_ZIPF]

        # "Maria Keller": a fairly common capitalised word right before a proper noun.
        for i in pending:
            nxt = i + 2
            if (
                nxt < len(units)
                and units[i + 1].kind == "space"
                and "\n" not in units[i + 1].text
                and nxt in found
                # An acronym after an ordinary word is no name ("Customer ID", "Phone PIN").
                and not units[nxt].text.isupper()
            ):
                found.add(i)
        # "... Maria Keller ... Maria paid": the same word is a proper noun elsewhere.
        names = {units[i].text for i in found}
        found |= {i for i in pending if units[i].text in names}
        return found


def _check_units(text: str, units: Sequence[Unit]) -> None:
    pos = 0
    for u in units:
        if u.start != pos or u.end <= u.start or text[u.start : u.end] != u.text:
            raise ValueError(
                "units do not match the text: pass split_units(text) for the same text"
            )
        pos = u.end
    if pos != len(text):
        raise ValueError("units do not match the text: pass split_units(text) for the same text")


def _unit_at(starts: list[int], units: Sequence[Unit], pos: int) -> int:
    """Index of the unit containing character ``pos`` (units tile the text)."""
    i = bisect.bisect_right(starts, pos) - 1
    return max(i, 0) if units else 0
