"""Small synthetic "private" datasets for demos and privacy tests.

Each record is a short templated text about a fictional person (name, age, city, e-mail,
phone, IBAN or customer ID, dates, money amounts) followed by a question whose numeric
answer follows from numbers in the text. Every piece of personal data and every number is
annotated as a :class:`Span` with exact character offsets into ``Example.question``, so
privacy code can check what leaks. Names come from built-in lists of made-up combinations;
e-mail domains are the reserved ``example.org/.com/.net``.
"""

from __future__ import annotations

import random
import string
import unicodedata
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from fedcot.data.tasks import Example, format_number

__all__ = [
    "CITIES",
    "FIRST_NAMES",
    "SPAN_KINDS",
    "SURNAMES",
    "TEMPLATE_NAMES",
    "Span",
    "generate_private_records",
]

#: Kinds a :class:`Span` may have.
SPAN_KINDS: tuple[str, ...] = (
    "name",
    "age",
    "amount",
    "email",
    "phone",
    "iban",
    "date",
    "city",
    "id",
)


@dataclass
class Span:
    """A piece of annotated text: ``question[start:end] == text``; ``kind`` in SPAN_KINDS."""

    start: int
    end: int
    kind: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored in ``Example.meta["spans"]``)."""
        return asdict(self)


FIRST_NAMES: tuple[str, ...] = (
    "Maria", "Jonas", "Aiko", "Kwame", "Priya", "Mateo", "Fatima", "Lukas", "Sofia", "Chen",
    "Amara", "Olga", "Tariq", "Ingrid", "Diego", "Mei", "Oluwaseun", "Elif", "Rafael", "Hana",
    "Nikolai", "Zainab", "Emil", "Lucía", "Kenji", "Ayesha", "Pieter", "Chiara", "Bongani",
    "Yusuf", "Leilani", "Sven", "Anouk", "Dmitri", "Noor", "Tomás", "Ines", "Rohan", "Sigrid",
    "Kofi", "Mirela", "Hamid", "Ximena", "Aleksander", "Nadia", "Jun", "Freya", "Gabriel",
)  # fmt: skip

SURNAMES: tuple[str, ...] = (
    "Keller", "Tanaka", "Mensah", "Sharma", "Fernandez", "Haddad", "Novak", "Lindqvist",
    "Okafor", "Moreau", "Kowalski", "Rossi", "Nguyen", "Petrov", "Yilmaz", "Andersen", "Silva",
    "Kim", "Osei", "Dubois", "Horvath", "Jansen", "Costa", "Bauer", "Nakamura", "Adeyemi",
    "Gonzalez", "Schmidt", "Papadopoulos", "Virtanen", "Kaur", "Mahlangu", "Castillo", "Zhang",
    "Berg", "O'Connor", "Müller", "Eriksen", "Farouk", "Takahashi", "Mwangi", "Lopez",
    "Dvořák", "Sato", "Hughes",
)  # fmt: skip


@dataclass(frozen=True)
class _Country:
    code: str  # ISO country code, also the IBAN prefix
    phone: str  # calling code
    currency: str
    bban_digits: int  # IBAN length minus 4 (all-digit account numbers only)
    scale: int  # how many currency units roughly match one euro, to keep amounts plausible


_COUNTRIES: dict[str, _Country] = {
    c.code: c
    for c in (
        _Country("AT", "43", "EUR", 16, 1),
        _Country("DE", "49", "EUR", 18, 1),
        _Country("FR", "33", "EUR", 23, 1),
        _Country("ES", "34", "EUR", 20, 1),
        _Country("PT", "351", "EUR", 21, 1),
        _Country("PL", "48", "PLN", 24, 4),
        _Country("SE", "46", "SEK", 20, 10),
        _Country("NO", "47", "NOK", 11, 10),
        _Country("DK", "45", "DKK", 14, 7),
        _Country("CH", "41", "CHF", 17, 1),
        _Country("BE", "32", "EUR", 12, 1),
        _Country("FI", "358", "EUR", 14, 1),
        _Country("CZ", "420", "CZK", 20, 25),
        _Country("HU", "36", "HUF", 24, 400),
        _Country("GR", "30", "EUR", 23, 1),
        _Country("SI", "386", "EUR", 15, 1),
        _Country("SK", "421", "EUR", 20, 1),
        _Country("HR", "385", "EUR", 17, 1),
        _Country("LT", "370", "EUR", 16, 1),
        _Country("EE", "372", "EUR", 16, 1),
    )
}

#: (city, country code). Real places; the people living there are made up.
CITIES: tuple[tuple[str, str], ...] = (
    ("Graz", "AT"), ("Linz", "AT"), ("Leipzig", "DE"), ("Freiburg", "DE"), ("Lyon", "FR"),
    ("Nantes", "FR"), ("Valencia", "ES"), ("Bilbao", "ES"), ("Porto", "PT"), ("Kraków", "PL"),
    ("Gdańsk", "PL"), ("Uppsala", "SE"), ("Malmö", "SE"), ("Bergen", "NO"), ("Aarhus", "DK"),
    ("Basel", "CH"), ("Ghent", "BE"), ("Tampere", "FI"), ("Brno", "CZ"), ("Debrecen", "HU"),
    ("Thessaloniki", "GR"), ("Ljubljana", "SI"), ("Košice", "SK"), ("Zadar", "HR"),
    ("Kaunas", "LT"), ("Tartu", "EE"),
)  # fmt: skip

_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_DOMAINS = ("example.org", "example.com", "example.net")

# --------------------------------------------------------------------------------------
# Value generators
# --------------------------------------------------------------------------------------

# Letters NFKD does not decompose into ASCII.
_TRANSLIT = str.maketrans({"ø": "o", "Ø": "O", "ß": "ss", "ł": "l", "Ł": "L", "æ": "ae"})


def _ascii(s: str) -> str:
    s = unicodedata.normalize("NFKD", s.translate(_TRANSLIT))
    return "".join(c for c in s if c in string.ascii_letters)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _iban(rng: random.Random, country: _Country) -> str:
    """A random IBAN with valid ISO 13616 check digits, grouped in fours."""
    bban = _digits(rng, country.bban_digits)
    # Check digits: move the country code and "00" to the end, letters to numbers (A=10).
    moved = bban + "".join(str(ord(c) - 55) for c in country.code) + "00"
    check = 98 - int(moved) % 97
    raw = f"{country.code}{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _phone(rng: random.Random, country: _Country) -> str:
    return f"+{country.phone} {rng.randint(600, 799)} {_digits(rng, 7)}"


def _email(rng: random.Random, first: str, last: str) -> str:
    local = f"{_ascii(first)}.{_ascii(last)}".lower()
    if rng.random() < 0.4:  # some addresses carry digits, as real ones do
        local += str(rng.randint(1, 99))
    return f"{local}@{rng.choice(_DOMAINS)}"


def _customer_id(rng: random.Random) -> str:
    prefix = rng.choice(("C-", "CUST-", "KD"))
    return prefix + _digits(rng, rng.choice((6, 7)))


def _date(rng: random.Random) -> str:
    year = rng.randint(2019, 2025)
    month = rng.randrange(12)
    day = rng.randint(1, 28)
    return f"{day} {_MONTHS[month]} {year}"


def _money(rng: random.Random, lo: int, hi: int, scale: int, cents: bool = True) -> Decimal:
    """An amount in [lo, hi] euros scaled to the currency; sometimes with cents."""
    whole = rng.randint(lo, hi) * scale
    if cents and scale == 1 and rng.random() < 0.35:
        return Decimal(whole) + Decimal(rng.choice((25, 50, 75, 90, 99))) / 100
    return Decimal(whole)


def _fmt_money(d: Decimal) -> str:
    """``1250 -> "1,250"``, ``37.5 -> "37.50"``."""
    return f"{d:,.2f}" if d != d.to_integral_value() else f"{int(d):,}"


# --------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Template:
    name: str
    text: str  # placeholders in braces; every one is filled and (except cur) annotated
    operation: str  # sum | difference | product | quotient
    operands: tuple[str, ...]  # placeholders whose values the operation combines, in order
    rationale: str


_TEMPLATES: tuple[_Template, ...] = (
    _Template(
        "rent-utilities",
        "{name}, {age}, from {city} ({email}, {phone}) paid {a1} {cur} rent in {month} and "
        "{a2} {cur} for utilities from account {iban}. How much did {first} pay in total?",
        "sum",
        ("a1", "a2"),
        "{first} paid {a1} {cur} for rent and {a2} {cur} for utilities. {a1} + {a2} = {ans}.",
    ),
    _Template(
        "shopping-day",
        "On {date}, {name} ({age}) of {city} bought groceries for {a1} {cur}, a jacket for "
        "{a2} {cur} and a book for {a3} {cur}. Customer ID: {cid}. Contact: {email}. "
        "How much did {first} spend that day?",
        "sum",
        ("a1", "a2", "a3"),
        "{first} spent {a1}, {a2} and {a3} {cur}. {a1} + {a2} + {a3} = {ans}.",
    ),
    _Template(
        "account-transfer",
        "{name} from {city}, aged {age}, had {a1} {cur} in account {iban} on {date} and "
        "transferred {a2} {cur} to a landlord. Phone on file: {phone}. "
        "How much money was left in the account?",
        "difference",
        ("a1", "a2"),
        "The account held {a1} {cur} and {a2} {cur} went out. {a1} - {a2} = {ans}.",
    ),
    _Template(
        "ticket-order",
        "{name} ({age}, {email}) ordered {q} concert tickets at {a1} {cur} each on {date}. "
        "Customer ID {cid}, {city}, phone {phone}. What was the total price of the order?",
        "product",
        ("q", "a1"),
        "{first} bought {q} tickets at {a1} {cur} each. {q} * {a1} = {ans}.",
    ),
    _Template(
        "age-in-years",
        "{name} is {age} years old and lives in {city}. {first} registered on {date} with "
        "customer ID {cid} and phone number {phone}. How old will {first} be in {n} years?",
        "sum",
        ("age", "n"),
        "{first} is {age} now. {age} + {n} = {ans}.",
    ),
    _Template(
        "age-gap",
        "{name} ({age}) and {name2} ({age2}) both live in {city}. {first} can be reached at "
        "{email} and {first2} at {email2}. How many years older is {first} than {first2}?",
        "difference",
        ("age", "age2"),
        "{first} is {age} and {first2} is {age2}. {age} - {age2} = {ans}.",
    ),
    _Template(
        "monthly-salary",
        "{name}, {age}, works in {city} (phone {phone}) and earns {a1} {cur} per month, paid to "
        "{iban} since "
        "{date}. How much does {first} earn in {m} months?",
        "product",
        ("a1", "m"),
        "{first} earns {a1} {cur} a month. {a1} * {m} = {ans}.",
    ),
    _Template(
        "shared-bill",
        "{name} ({age}, {phone}) and {name2} ({phone2}) from {city} split a dinner bill of "
        "{a1} {cur} "
        "equally on {date}. How much did {first} pay?",
        "quotient",
        ("a1", "two"),
        "The bill of {a1} {cur} is split between two people. {a1} / 2 = {ans}.",
    ),
)

#: Names of the built-in record templates.
TEMPLATE_NAMES: tuple[str, ...] = tuple(t.name for t in _TEMPLATES)

# Which span kind each placeholder gets (None: not annotated; it carries no digits or PII).
_KINDS: dict[str, str | None] = {
    "name": "name",
    "name2": "name",
    "first": "name",
    "first2": "name",
    "age": "age",
    "age2": "age",
    "city": "city",
    "email": "email",
    "email2": "email",
    "phone": "phone",
    "phone2": "phone",
    "iban": "iban",
    "cid": "id",
    "date": "date",
    "month": "date",
    "a1": "amount",
    "a2": "amount",
    "a3": "amount",
    "q": "amount",
    "n": "amount",
    "m": "amount",
    "cur": None,
    "two": None,
}


def _person(rng: random.Random, taken: set[str]) -> tuple[str, str]:
    while True:
        first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
        if first not in taken and last not in taken:  # keeps two people distinguishable
            return first, last


def _values(rng: random.Random, tpl: _Template) -> dict[str, Any]:
    """Draw every placeholder value of ``tpl`` (operands as Decimal, the rest as text)."""
    city, code = rng.choice(CITIES)
    country = _COUNTRIES[code]
    s = country.scale
    first, last = _person(rng, set())
    first2, last2 = _person(rng, {first, last})
    v: dict[str, Any] = {
        "name": f"{first} {last}",
        "first": first,
        "name2": f"{first2} {last2}",
        "first2": first2,
        "city": city,
        "cur": country.currency,
        "email": _email(rng, first, last),
        "email2": _email(rng, first2, last2),
        "phone": _phone(rng, country),
        "phone2": _phone(rng, country),
        "iban": _iban(rng, country),
        "cid": _customer_id(rng),
        "date": _date(rng),
        "month": rng.choice(_MONTHS),
        "age": Decimal(rng.randint(19, 79)),
        "two": Decimal(2),
    }
    if tpl.name == "rent-utilities":
        v["a1"] = _money(rng, 450, 2400, s, cents=False)
        v["a2"] = _money(rng, 60, 420, s)
    elif tpl.name == "shopping-day":
        v["a1"] = _money(rng, 20, 180, s)
        v["a2"] = _money(rng, 40, 350, s)
        v["a3"] = _money(rng, 8, 45, s)
    elif tpl.name == "account-transfer":
        v["a1"] = _money(rng, 1500, 9000, s)
        v["a2"] = _money(rng, 300, 1400, s)
    elif tpl.name == "ticket-order":
        v["q"] = Decimal(rng.randint(2, 9))
        v["a1"] = _money(rng, 18, 140, s)
    elif tpl.name == "age-in-years":
        v["n"] = Decimal(rng.randint(2, 25))
    elif tpl.name == "age-gap":
        v["age"] = Decimal(rng.randint(40, 79))
        v["age2"] = Decimal(rng.randint(19, 39))
    elif tpl.name == "monthly-salary":
        v["a1"] = _money(rng, 1800, 6500, s, cents=False)
        v["m"] = Decimal(rng.randint(2, 12))
    elif tpl.name == "shared-bill":
        v["a1"] = _money(rng, 30, 320, s, cents=False)
    return v


def _compute(op: str, xs: list[Decimal]) -> Decimal:
    if op == "sum":
        return sum(xs, Decimal(0))
    if op == "difference":
        return xs[0] - xs[1]
    if op == "product":
        out = Decimal(1)
        for x in xs:
            out *= x
        return out
    if op == "quotient":
        return xs[0] / xs[1]
    raise ValueError(f"unknown operation {op!r}")


def _show(value: Any) -> str:
    return _fmt_money(value) if isinstance(value, Decimal) else str(value)


def _render(tpl: _Template, values: dict[str, Any]) -> tuple[str, list[Span], dict[str, int]]:
    """Fill ``tpl.text``; return the text, its spans and each placeholder's first span index."""
    parts: list[str] = []
    spans: list[Span] = []
    first_span: dict[str, int] = {}
    pos = 0
    for literal, field_name, _, _ in string.Formatter().parse(tpl.text):
        parts.append(literal)
        pos += len(literal)
        if field_name is None:
            continue
        text = _show(values[field_name])
        kind = _KINDS[field_name]
        if kind is not None:
            first_span.setdefault(field_name, len(spans))
            spans.append(Span(pos, pos + len(text), kind, text))
        parts.append(text)
        pos += len(text)
    return "".join(parts), spans, first_span


def _record(seed: int, i: int) -> Example:
    # One generator per record: record i is the same whatever n is.
    rng = random.Random(f"fedcot-private-records/{seed}/{i}")
    tpl = _TEMPLATES[rng.randrange(len(_TEMPLATES))]
    values = _values(rng, tpl)
    question, spans, first_span = _render(tpl, values)
    answer = _compute(tpl.operation, [values[k] for k in tpl.operands])
    label = format_number(float(answer))
    shown = {k: _show(v) for k, v in values.items()}
    rationale = tpl.rationale.format(**shown, ans=_fmt_money(answer.normalize()))
    people = [
        {"name": values["name"], "first": values["first"], "email": values["email"]},
    ]
    if "{name2}" in tpl.text:
        people.append(
            {"name": values["name2"], "first": values["first2"], "email": values["email2"]}
        )
    return Example(
        id=f"private-{seed}-{i}",
        question=question,
        label=label,
        rationale=rationale,
        rationale_label=label,
        meta={
            "spans": [s.to_dict() for s in spans],
            "template": tpl.name,
            "operation": tpl.operation,
            # Operand i is spans[operand_spans[i]] (the constant 2 of "split equally" is
            # not in the text and is listed in `constants`).
            "operand_spans": [first_span[k] for k in tpl.operands if k in first_span],
            "constants": [int(values[k]) for k in tpl.operands if k not in first_span],
            "currency": values["cur"],
            "people": people,
        },
    )


def generate_private_records(n: int, seed: int = 0) -> list[Example]:
    """``n`` synthetic private records for task ``"private-records"`` (math).

    Deterministic per ``seed``; record i does not depend on ``n``. ``meta["spans"]`` holds
    :class:`Span` dicts with exact offsets into ``question``; ``meta["operation"]`` and
    ``meta["operand_spans"]`` say how the label follows from the annotated numbers.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [_record(seed, i) for i in range(n)]
