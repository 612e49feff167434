"""Find the sensitive parts of a text and their types, on Presidio's ``AnalyzerEngine``.

:class:`SensitivityDetector` returns typed :class:`Entity` spans: ``person``, ``place``,
``org``, ``condition``, ``drug``, ``date``, ``email``, ``phone``, ``iban``, ``card``, ``id``,
``url``, ``number``, plus ``term`` (the user's own terms), ``name`` (a proper noun of no
known type) and ``rare`` (a rare word of no known type).

The engine is Presidio's (presidio-analyzer), run offline on a blank spaCy English pipeline
(no model download). It holds Presidio's own e-mail, IBAN, credit-card and URL recognisers
(the e-mail check reads the public-suffix list bundled with tldextract, never the network)
and fedcot's recognisers: phone numbers through ``phonenumbers``, IDs, dates, numbers,
people and places from public gazetteers plus capitalisation, organisations, medical
conditions and drugs, user terms and rare words. Any Presidio recogniser a user already has
(a national ID, a domain term list) plugs in through ``recognizers=``; its entity types map
to ours through :data:`PRESIDIO_TYPES` (unknown ones become ``id``).

Text is normalised first (:func:`normalize`: NFKC per character, zero-width characters and
soft hyphens removed), so "Ma\\u200brta" is "Marta" for the detector and for everything
after it. Overlaps are resolved by type precedence (structured identifiers first), then by
length.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fedcot.errors import MissingDependencyError
from fedcot.privacy.frequency import zipf
from fedcot.privacy.gazetteers import Gazetteers, gazetteers
from fedcot.privacy.units import Unit, split_units

__all__ = [
    "ENTITY_TYPES",
    "PRESIDIO_TYPES",
    "Entity",
    "SensitivityDetector",
    "normalize",
]

#: Types :meth:`SensitivityDetector.entities` may return, highest precedence first.
ENTITY_TYPES: tuple[str, ...] = (
    "email",
    "url",
    "iban",
    "card",
    "phone",
    "id",
    "date",
    "term",
    "condition",
    "drug",
    "org",
    "person",
    "place",
    "name",
    "number",
    "rare",
)
_RANK = {t: i for i, t in enumerate(ENTITY_TYPES)}

#: Presidio entity names (its own and common third-party ones) → fedcot types.
PRESIDIO_TYPES: dict[str, str] = {
    "EMAIL_ADDRESS": "email",
    "URL": "url",
    "IBAN_CODE": "iban",
    "CREDIT_CARD": "card",
    "PHONE_NUMBER": "phone",
    "DATE_TIME": "date",
    "PERSON": "person",
    "LOCATION": "place",
    "GPE": "place",
    "ORGANIZATION": "org",
    "NRP": "name",
    "MEDICAL_CONDITION": "condition",
    "DRUG": "drug",
    **{f"FEDCOT_{t.upper()}": t for t in ENTITY_TYPES},
}

# -- normalisation -----------------------------------------------------------------------

_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e")


def normalize(text: str) -> str:
    """NFKC per character, zero-width characters and soft hyphens removed, lone
    surrogates replaced by U+FFFD (they cannot be encoded)."""
    out = []
    for c in text:
        if c in _INVISIBLE:
            continue
        if "\ud800" <= c <= "\udfff":
            out.append("\ufffd")
            continue
        out.append(unicodedata.normalize("NFKC", c) if ord(c) > 0x7F else c)
    return "".join(out)


def normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """:func:`normalize` plus, for every raw offset 0..len(text), its normalised offset."""
    pieces: list[str] = []
    offsets: list[int] = []
    pos = 0
    for c in text:
        offsets.append(pos)
        piece = normalize(c)
        pieces.append(piece)
        pos += len(piece)
    offsets.append(pos)
    return "".join(pieces), offsets


# -- entities ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """A sensitive span ``text[start:end]`` of a type in :data:`ENTITY_TYPES`."""

    start: int
    end: int
    type: str
    text: str
    score: float = 1.0
    source: str = ""


# -- patterns (ours) ---------------------------------------------------------------------

_EMAIL_RE = re.compile(
    r"(?<![\w.%+\-])[\w%+\-]+(?:\.[\w%+\-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w\-])"
)
_URL_RE = re.compile(
    r"(?i)(?<![\w@.])(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)\]]"
    r"|(?<![\w@.\-])(?:[a-z0-9\-]+\.)+(?:com|org|net|io|co|photo|dev|app|info|me|eu|de|fr|"
    r"uk|nl|es|it|pl|se|no|dk|fi|ch|at|be|ie|pt|blog|shop|site)/[^\s<>\"']*[^\s<>\"'.,;:!?)\]]"
)
_IBAN_RE = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
_CARD_RE = re.compile(r"(?<![\w\-])\d{4}([ \-]?)\d{4}\1\d{4}\1\d{1,7}(?![\w\-])")
_CARD_TAIL_RE = re.compile(
    r"(?i)\b(?:visa|mastercard|amex|card|debit|credit)\b[^.\n]{0,20}?"
    r"\b(?:ending|ends)(?:\s+in)?\s+(?P<value>\d{4})\b"
)
# A phone candidate: optional +CC or (0), then digit groups with separators, 7-15 digits.
_PHONE_RE = re.compile(
    r"(?<![\w+/.\-])(?:\+\d{1,3}[ .\-]?)?(?:\(0?\d{1,4}\)[ .\-]?)?\d{1,12}(?:[ .\-/]\d{1,12}){0,6}"
    r"(?![\w\-]|[.,/]\d)"
)
_PHONE_CUE_RE = re.compile(
    r"(?i)\b(?:tel|phone|telephone|mobile|mob|cell|fax|call|ring|text|sms|whatsapp|"
    r"number|no\.?|nr\.?|contact|reach)\b[^\n\d+]{0,25}$"
)
_ID_CODE_RE = re.compile(
    r"(?<![\w\-])(?=[A-Z0-9\-/]*\d)(?=[A-Z0-9\-/]*[A-Z])[A-Z0-9]+(?:[\-/][A-Z0-9]+)*(?![\w\-])"
)
_ID_KEYWORD_RE = re.compile(
    r"(?i:\b(?:id|mrn|nhs|nino|ssn|policy|claim|account|acct|a/c|ticket|case|order|invoice|"
    r"passport|licen[cs]e|employee|emp|staff|member(?:ship)?|ref(?:erence)?|customer|client|"
    r"patient|record|file|booking|tracking|parcel|contract|registration|reg|badge|"
    r"payroll|sort\s+code|routing|tax|vat|imei|serial|no|nr|number|#)"
    r"\.?(?:\s+(?:no|nr|number|id|code))?\.?)\s*[:#]?\s*"
    r"(?P<value>[A-Za-z]{0,4}[0-9][A-Z0-9]*(?:[\-/.][A-Z0-9]+)*(?: \d{2,})*)(?![\w\-])"
)
# Letters then digit groups: "ZK 7710 3345 1", "TG 417733", "M-DV 4172", "QJ 48 29 61 C";
# Dutch postcodes "3511 AS". Currency codes and units are not identifiers.
_ID_PREFIXED_RE = re.compile(
    r"(?<![\w\-])(?P<p>[A-Z]{1,4}(?:-[A-Z]{1,3})?)(?:[ \-]\d+[A-Z]?){1,5}(?: [A-Z](?![\w]))?"
    r"(?![\w\-]|[.,]\d)"
)
_NL_POSTCODE_RE = re.compile(r"(?<![\w\-])\d{4} ?[A-Z]{2}(?![\w\-])")
_NOT_ID_PREFIX = frozenset(
    {"EUR", "USD", "GBP", "CHF", "PLN", "SEK", "NOK", "DKK", "CZK", "HUF", "JPY", "INR",
     "AUD", "CAD", "NZD", "ZAR", "TRY", "BRL", "MXN", "RON", "BGN", "ISK", "AED", "SGD",
     "HKD", "CNY", "KRW", "MG", "ML", "KG", "KM", "CM", "MM", "BPM", "AM", "PM", "NO",
     "NR", "A", "I", "BMI", "BP", "HR", "DOB", "AGE", "AGED", "VAT", "TAX", "Q", "UK",
     "US", "EU", "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "SEPT",
     "OCT", "NOV", "DEC", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"}
)  # fmt: skip
_SSN_RE = re.compile(r"(?<![\w\-])\d{3}-\d{2}-\d{4}(?![\w\-])")
_UK_POSTCODE_RE = re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b")
_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|"
    r"December|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?)(?![\w])"
)
_WEEKDAY = (
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|"
    r"(?:Mon|Tues|Tue|Wed|Thurs|Thu|Fri|Sat|Sun)\.?)"
)
_DAY = r"(?:3[01]|[12]\d|0?[1-9])(?:st|nd|rd|th)?(?![\w])(?![.,]\d)"
_YEAR = r"\d{4}(?![\w])(?![.,]\d)"
_DATE_WORDS_RE = re.compile(
    r"(?i)(?<![\w.,])"
    rf"(?:{_WEEKDAY},?\s+(?:the\s+)?)?"
    r"(?:"
    rf"{_DAY}(?:\s+of)?\s+{_MONTH}(?:,?\s+{_YEAR})?"
    rf"|{_MONTH}\s+{_DAY}(?:,?\s+{_YEAR})?"
    rf"|{_MONTH},?\s+{_YEAR}"
    r")"
)
_DATE_NUM_RE = re.compile(
    r"(?<![\w.\-/])(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}(?:[-/.](?:\d{4}|\d{2}))?)"
    r"(?![\w\-/]|\.\d)"
)
_DATE_CUE_RE = re.compile(
    r"(?i)\b(?:on|dob|born|date|from|until|till|by|since|before|after|due|admitted|"
    r"discharged|seen|dated|expires?|expiry|valid)\b[\s:]*$"
)
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")


def _overlaps(spans: Sequence[tuple[int, int]], s: int, e: int) -> bool:
    return any(a < e and s < b for a, b in spans)


# -- the word rules ----------------------------------------------------------------------

_HONORIFICS = frozenset(
    {"mr", "mrs", "ms", "mx", "dr", "prof", "sir", "madam", "miss", "mister", "dame", "lord",
     "lady", "herr", "frau", "mme", "mlle", "sr", "sra", "srta", "sig", "nurse", "sister"}
)  # fmt: skip
_PERSON_CUES = frozenset(
    {"dear", "hi", "hello", "hey", "thanks", "cheers", "love", "name", "patient", "client",
     "customer", "colleague", "son", "daughter", "wife", "husband", "mum", "mom", "dad",
     "brother", "sister", "friend", "named", "called", "cc", "attn", "insured", "applicant",
     "passenger", "employee", "nok", "contact", "owner", "tenant", "claimant", "from"}
)  # fmt: skip
_PLACE_CUES = frozenset({"in", "from", "to", "at", "near", "via", "of", "into", "visiting"})
_ORG_WORDS = frozenset(
    {"bank", "clinic", "hospital", "hospitals", "inc", "ltd", "llc", "plc", "gmbh", "ag",
     "sa", "bv", "nv", "ab", "oy", "as", "spa", "srl", "corp", "corporation", "company",
     "co", "group", "university", "college", "school", "academy", "insurance",
     "assurance", "pharmacy", "surgery", "practice", "centre", "center", "institute",
     "foundation", "trust", "partners", "associates", "solutions", "services", "systems",
     "logistics", "freight", "airlines", "airways", "telecom", "energy", "motors",
     "savings", "credit", "union", "mutual", "holdings", "labs", "laboratories", "health",
     "healthcare", "medical", "care", "ward", "unit", "department", "council", "ministry",
     "agency", "authority", "fund", "capital", "finance", "financial", "consulting",
     "media", "studio", "studios", "hotel", "restaurant", "cafe", "store", "stores",
     "shop", "market", "supermarket", "gym", "club", "church", "nhs", "gp", "dental",
     "clinics", "fisk", "transport", "transportes", "express", "post", "mobile",
     "broadband", "software", "technologies", "tech", "electric", "pharma", "hospice",
     "home", "homes", "realty", "estates", "law", "legal", "chambers", "llp", "banque",
     "banco", "banca", "sparkasse", "kasse", "krankenkasse", "versicherung", "klinik",
     "klinikum", "clinica", "clínica", "hôpital", "ospedale", "universidad", "université",
     "universität", "universita", "università", "schule", "escuela", "école", "ecole",
     "stiftung", "verein", "fondation", "fundación", "ou", "oü", "sarl", "sas", "kg",
     "kft", "zrt", "sp", "spółka", "ltda", "pty", "bhd", "pte", "kk", "trading",
     "airline", "charity", "society", "association"}
)  # fmt: skip
# Organisation words that name a place one goes to ("apollo hospital"), and the small words
# inside organisation and place names.
_ORG_PLACES = frozenset(
    {
        "hospital",
        "clinic",
        "surgery",
        "pharmacy",
        "school",
        "college",
        "university",
        "bank",
        "hotel",
        "academy",
    }
)
_CONNECTORS = frozenset({"of", "de", "del", "du", "des", "der", "am", "&", "für", "for"})
_STREET_SUFFIXES = ("straße", "strasse", "gade", "straat", "gatan", "vej", "weg", "gasse",
                    "allee", "platz", "laan", "vägen", "veien")  # fmt: skip
_STREET_WORDS = frozenset(
    {"street", "st", "road", "rd", "avenue", "ave", "lane", "ln", "boulevard", "blvd",
     "drive", "dr", "way", "place", "pl", "square", "sq", "court", "ct", "close",
     "crescent", "terrace", "gardens", "grove", "hill", "park", "row", "walk", "strasse",
     "straße", "str", "weg", "gasse", "platz", "allee", "rue", "via", "viale", "calle",
     "avenida", "rua", "plaza", "laan", "straat", "gatan", "gate", "vej", "ulica", "ul",
     "quay", "embankment", "parade", "mews", "highway", "hwy"}
)  # fmt: skip
_STREET_PREFIX = frozenset({"rue", "via", "viale", "calle", "avenida", "rua", "ulica", "ul"})
_NOT_NAMES = frozenset(
    {"i", "i'm", "i'd", "i'll", "i've", "ok", "okay", "re", "fw", "fwd", "subject", "dear",
     "hi", "hello", "regards", "thanks", "best", "kind", "please", "yes", "no", "monday",
     "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january",
     "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december", "god", "english", "french", "german", "spanish",
     "mg", "ml", "kg", "dob", "urgent", "private", "confidential", "note", "notes",
     "patient", "customer", "team", "manager", "doctor", "nurse", "the", "a", "an"}
)  # fmt: skip
# A word of the ICD-10-CM titles this rare is clinical jargon, hence a condition by itself.
_JARGON_ZIPF = 2.5
_INJURED = frozenset(
    {"fractured", "broken", "sprained", "torn", "dislocated", "ruptured", "herniated"}
)
# "<word> disease": the word names the condition ("Parkinson's disease", "kidney failure").
_CONDITION_HEADS = frozenset(
    {"disease", "syndrome", "failure", "palsy", "fracture", "rupture", "tear", "sprain",
     "infection", "cancer", "tumour", "tumor", "deficiency", "insufficiency", "stenosis"}
)  # fmt: skip
_PARTICLES = frozenset(
    {"de", "da", "di", "do", "dos", "das", "del", "della", "van", "von", "der", "den", "ter",
     "te", "la", "le", "du", "des", "ní", "nic", "mac", "mc", "bin", "ibn", "bint", "al",
     "el", "y", "zu", "af", "ó", "á", "st"}
)  # fmt: skip
_TERMINATORS = frozenset(".!?:")
_OPENERS = frozenset("\"'“”‘’«»([{-–—*•>")
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "mx", "dr", "prof", "st", "jr", "sr", "mt", "vs", "etc", "no", "nr",
     "fig", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
     "dec", "e.g", "i.e", "approx", "dept", "inc", "ltd", "co", "corp", "ref", "tel"}
)  # fmt: skip

# A capitalised word inside a sentence is a proper noun when it is no commoner than this
# (common capitalised words mid-sentence are titles: "Senior Data Analyst").
_CAPS_MAX_ZIPF = 4.3
# ... or a gazetteer name (person or place) no commoner than this ("London").
_CAPS_GAZ_ZIPF = 6.0
# A sentence-initial capitalised word: rare, or a gazetteer name ("Mei can be reached").
_START_RARE_ZIPF = 3.5
_START_GAZ_ZIPF = 5.0
# A lower-case (or all-caps) word counts if it is a gazetteer name rarer than this, or a
# gazetteer name after a cue ("in lisbon", "wife KEIKO") rarer than the next.
_NAME_MAX_ZIPF = 3.0
_CUE_GAZ_ZIPF = 4.5
_PLACE_CUE_ZIPF = 4.3


def _norm(word: str) -> str:
    w = word.lower().replace("’", "'")
    return w[:-2] if w.endswith("'s") and len(w) > 3 else w


@dataclass
class _Ctx:
    """One text's units plus the per-word facts the word rules share."""

    text: str
    units: list[Unit]
    words: list[int]  # indices of word units
    upper_lines: set[int]  # word indices on lines written in capitals

    @classmethod
    def build(cls, text: str, units: list[Unit]) -> _Ctx:
        words = [i for i, u in enumerate(units) if u.kind == "word"]
        upper: set[int] = set()
        line: list[int] = []
        for i in [*words, -1]:
            if i == -1 or (line and "\n" in text[units[line[-1]].end : units[i].start]):
                letters = [units[j].text for j in line if len(units[j].text) > 1]
                if letters and sum(w.isupper() for w in letters) >= 0.6 * len(letters):
                    upper.update(line)
                line = []
            if i != -1:
                line.append(i)
        return cls(text, units, words, upper)

    def prev_word(self, i: int) -> str:
        j = i - 1
        while j >= 0 and self.units[j].kind != "word":
            if self.units[j].kind == "number" or "\n" in self.units[j].text:
                return ""
            j -= 1
        return _norm(self.units[j].text) if j >= 0 else ""

    def sentence_initial(self, i: int) -> bool:
        saw_space = False
        j = i - 1
        while j >= 0:
            u = self.units[j]
            if u.kind == "space":
                if "\n" in u.text:
                    return True
                saw_space = True
            elif u.kind == "punct" and u.text in _OPENERS:
                pass
            elif u.kind == "punct" and u.text in _TERMINATORS:
                if not saw_space:
                    return False
                if u.text == "." and j > 0 and self.units[j - 1].kind == "word":
                    prev = _norm(self.units[j - 1].text)
                    if len(prev) == 1 or prev in _ABBREVIATIONS:
                        return False
                return True
            else:
                return False
            j -= 1
        return True


class _WordRules:
    """People, places, organisations, conditions, drugs and rare words, over word units."""

    def __init__(self, gaz: Gazetteers, rare_zipf: float) -> None:
        self.gaz = gaz
        self.rare_zipf = rare_zipf

    # -- medical ------------------------------------------------------------------------
    def medical(self, ctx: _Ctx) -> Iterator[tuple[str, int, int]]:
        u = ctx.units
        w = ctx.words
        low = [_norm(u[i].text) for i in w]
        p = 0
        while p < len(w):
            n = self._phrase(low, p) or self._pattern(low, p)
            if n and _one_line(ctx, p, p + n - 1):
                a, b = self._extend(ctx, low, p, p + n - 1)
                yield "condition", u[w[a]].start, u[w[b]].end
                p = b + 1
                continue
            word = low[p]
            if self._is_condition(word):
                s = p
                # "type 2 diabetes": a preceding "type N" belongs to the condition.
                if p >= 1 and low[p - 1] == "type" and self._number_between(ctx, p - 1, p):
                    s = p - 1
                a, b = self._extend(ctx, low, s, p)
                yield "condition", u[w[a]].start, u[w[b]].end
                p = b + 1
                continue
            if word in self.gaz.drugs:
                yield "drug", u[w[p]].start, u[w[p]].end
            p += 1

    def _is_condition(self, word: str) -> bool:
        conditions = self.gaz.conditions
        if word in conditions or (len(word) > 4 and word.endswith("s") and word[:-1] in conditions):
            return True
        # Clinical jargon of the ICD-10-CM titles ("tendinopathy", "cholecystitis").
        return word in self.gaz.medical_words and zipf(word) < _JARGON_ZIPF

    def _extend(self, ctx: _Ctx, low: list[str], a: int, b: int) -> tuple[int, int]:
        """Grow a condition over adjacent medical modifiers ("lumbar disc herniation",
        "neck of femur", "CKD stage 3"): ICD-10-CM words, "of" between two of them."""
        med = self.gaz.medical_words

        def joined(i: int, j: int) -> bool:
            gap = ctx.text[ctx.units[ctx.words[i]].end : ctx.units[ctx.words[j]].start]
            return gap in (" ", "-") or (gap.strip().isdigit() and len(gap) <= 4)

        for _ in range(3):
            if a >= 1 and joined(a - 1, a) and (low[a - 1] in med or low[a - 1] in _INJURED):
                a -= 1
            if b + 1 < len(low) and joined(b, b + 1) and low[b + 1] in med:
                b += 1
            elif (
                b + 2 < len(low)
                and low[b + 1] == "of"
                and low[b + 2] in med
                and joined(b, b + 1)
                and joined(b + 1, b + 2)
            ):
                b += 2
        return a, b

    @staticmethod
    def _pattern(low: list[str], p: int) -> int:
        """Injuries and eponyms: "fractured left wrist", "kidney failure", "Lyme disease"."""
        nxt = low[p + 1 : p + 3]
        if low[p] in _INJURED and nxt:
            return 3 if nxt[0] in ("left", "right") and len(nxt) > 1 else 2
        if nxt and nxt[0] in _CONDITION_HEADS and low[p] not in _NOT_NAMES:
            return 2
        return 0

    def _phrase(self, low: list[str], p: int) -> int:
        for n in (4, 3, 2):
            if tuple(low[p : p + n]) in self.gaz.condition_phrases:
                return n
        return 0

    @staticmethod
    def _number_between(ctx: _Ctx, a: int, b: int) -> bool:
        ua, ub = ctx.units[ctx.words[a]], ctx.units[ctx.words[b]]
        gap = ctx.text[ua.end : ub.start].strip()
        return gap.isdigit() or gap.upper() in ("I", "II")

    # -- names, places, organisations ---------------------------------------------------
    def names(self, ctx: _Ctx) -> Iterator[tuple[str, int, int]]:
        flagged = [self._is_name_word(ctx, k) for k in range(len(ctx.words))]
        for a, b in self._runs(ctx, flagged):
            yield (
                self._run_type(ctx, a, b),
                ctx.units[ctx.words[a]].start,
                ctx.units[ctx.words[b]].end,
            )
        yield from self._streets(ctx)

    def _is_name_word(self, ctx: _Ctx, k: int) -> bool:
        i = ctx.words[k]
        text = ctx.units[i].text
        word = _norm(text)
        if word in _NOT_NAMES or word in _HONORIFICS or len(word) < 2:
            return False
        z = zipf(word)
        place = word in self.gaz.places
        gaz = place or self.gaz.is_name(word)
        prev = ctx.prev_word(i)
        acronym = len(text) > 1 and text.isupper()  # "IBAN", "EUR": capitals say nothing
        if text[0].isupper() and i not in ctx.upper_lines and not acronym:
            if not ctx.sentence_initial(i):
                return z < _CAPS_MAX_ZIPF or (gaz and z < _CAPS_GAZ_ZIPF)
            return (
                z < _START_RARE_ZIPF
                or (gaz and z < _START_GAZ_ZIPF)
                or (place and self._postcode_next(ctx, i))
            )
        # Lower case, or a line in capitals: capitalisation says nothing.
        if not gaz:
            return False
        if z < _NAME_MAX_ZIPF or prev in _HONORIFICS:
            return True
        if z < _CUE_GAZ_ZIPF and (i in ctx.upper_lines or self._line_edge(ctx, k)):
            return True
        if place and z < _CAPS_GAZ_ZIPF and self._postcode_next(ctx, i):
            return True
        if prev in _PERSON_CUES and self.gaz.is_name(word):
            return z < _CUE_GAZ_ZIPF
        if place and prev in _PLACE_CUES:
            return z < _PLACE_CUE_ZIPF
        return z < _CUE_GAZ_ZIPF and self._name_pair(ctx, k)

    @staticmethod
    def _line_edge(ctx: _Ctx, k: int) -> bool:
        """First or last word of a line: a greeting's or a signature's name ("luca here")."""
        u = ctx.units[ctx.words[k]]
        before = ctx.text[: u.start].rsplit("\n", 1)[-1]
        after = ctx.text[u.end :].split("\n", 1)[0]
        return not re.search(r"\w", before) or not re.search(r"[^\W\d_]{2,}", after)

    @staticmethod
    def _postcode_next(ctx: _Ctx, i: int) -> bool:
        """A town in an address: followed by a postcode, or after a postal number."""
        after = ctx.text[ctx.units[i].end : ctx.units[i].end + 10]
        before = ctx.text[max(0, ctx.units[i].start - 7) : ctx.units[i].start]
        return bool(_UK_POSTCODE_RE.match(after.lstrip())) or bool(re.search(r"\d{4,5} $", before))

    def _name_pair(self, ctx: _Ctx, k: int) -> bool:
        """A first name next to a surname ("lars brennan", "JOHANNA WEISS")."""
        words = ctx.words
        here = _norm(ctx.units[words[k]].text)
        if k + 1 < len(words) and self._adjacent(ctx, k, k + 1):
            nxt = _norm(ctx.units[words[k + 1]].text)
            if here in self.gaz.first_names and nxt in self.gaz.last_names:
                return zipf(nxt) < _CUE_GAZ_ZIPF
        if k >= 1 and self._adjacent(ctx, k - 1, k):
            before = _norm(ctx.units[words[k - 1]].text)
            if before in self.gaz.first_names and here in self.gaz.last_names:
                return zipf(before) < _CUE_GAZ_ZIPF
        return False

    def _runs(self, ctx: _Ctx, flagged: list[bool]) -> Iterator[tuple[int, int]]:
        """Maximal runs of flagged words separated by one space (or joined: "Saint-Denis"),
        through name particles and initials ("Ana de la Cruz", "J. R. Keller")."""
        n = len(ctx.words)
        bridge = [self._particle(ctx, k) for k in range(n)]
        k = 0
        while k < n:
            if not flagged[k] and not (bridge[k] and k + 1 < n and flagged[k + 1]):
                k += 1
                continue
            a = k
            while (
                k + 1 < n
                and self._adjacent(ctx, k, k + 1)
                and (
                    flagged[k + 1]
                    or (bridge[k + 1] and self._leads_to_name(ctx, flagged, bridge, k + 1))
                )
            ):
                k += 1
            if flagged[a] or any(flagged[a : k + 1]):
                yield a, k
            k += 1

    def _leads_to_name(self, ctx: _Ctx, flagged: list[bool], bridge: list[bool], k: int) -> bool:
        while k < len(flagged) and bridge[k] and not flagged[k]:
            if k + 1 >= len(flagged) or not self._adjacent(ctx, k, k + 1):
                return False
            k += 1
        return k < len(flagged) and flagged[k]

    @staticmethod
    def _particle(ctx: _Ctx, k: int) -> bool:
        u = ctx.units[ctx.words[k]]
        nxt = ctx.text[u.end : u.end + 1]
        return _norm(u.text) in _PARTICLES or (len(u.text) == 1 and u.text.isupper() and nxt == ".")

    @staticmethod
    def _adjacent(ctx: _Ctx, a: int, b: int) -> bool:
        ua, ub = ctx.units[ctx.words[a]], ctx.units[ctx.words[b]]
        gap = ctx.text[ua.end : ub.start]
        if gap == ". ":  # "J. Keller", not "Brno. Emil"
            return len(ua.text) == 1
        return gap in (" ", "-", " - ", "'")

    def _run_type(self, ctx: _Ctx, a: int, b: int) -> str:
        words = [_norm(ctx.units[ctx.words[k]].text) for k in range(a, b + 1)]
        prev = ctx.prev_word(ctx.words[a])
        phrase = " ".join(words)
        if len(words) > 1 and (words[0] in self.gaz.first_names or prev in _HONORIFICS):
            return "person"
        if prev in _HONORIFICS or prev in _PERSON_CUES - _PLACE_CUES:
            return "person"
        is_place = phrase in self.gaz.places
        is_person = all(self.gaz.is_name(w) for w in words)
        if is_place and (prev in _PLACE_CUES or not is_person):
            return "place"
        if is_person or len(words) in (2, 3):
            return "person"
        return "name"

    def _streets(self, ctx: _Ctx) -> Iterator[tuple[str, int, int]]:
        u, w = ctx.units, ctx.words
        for k, i in enumerate(w):
            word = _norm(u[i].text)
            if u[i].text[:1].isupper() and word.endswith(_STREET_SUFFIXES) and len(word) > 6:
                yield "place", u[i].start, u[i].end  # "Kaiserstraße", "Jægersborggade"
                continue
            if word not in _STREET_WORDS or not u[i].text[:1].isupper():
                continue
            if word in _STREET_PREFIX and k + 1 < len(w):  # "Rue Saint-Denis", "Via Roma"
                end = k + 1
                while (
                    end + 1 < len(w)
                    and u[w[end + 1]].text[:1].isupper()
                    and (self._adjacent(ctx, end, end + 1))
                ):
                    end += 1
                yield "place", u[i].start, u[w[end]].end
            elif k >= 1 and u[w[k - 1]].text[:1].isupper() and self._adjacent(ctx, k - 1, k):
                start = k - 1
                while (
                    start >= 1
                    and u[w[start - 1]].text[:1].isupper()
                    and self._adjacent(ctx, start - 1, start)
                    and _norm(u[w[start - 1]].text) not in _PLACE_CUES
                ):
                    start -= 1
                yield "place", u[w[start]].start, u[i].end

    def orgs(self, ctx: _Ctx) -> Iterator[tuple[str, int, int]]:
        """A capitalised run around an organisation word, through connectors ("Bank of
        Ireland", "Banque de France"); in lower case, a rare word before a place-like
        organisation word ("apollo hospital")."""
        u, w = ctx.units, ctx.words
        low = [_norm(u[i].text) for i in w]
        caps = [u[i].text[:1].isupper() and low[k] not in _NOT_NAMES for k, i in enumerate(w)]
        for k in range(len(w)):
            if low[k] not in _ORG_WORDS:
                continue
            if not caps[k]:
                if (
                    low[k] in _ORG_PLACES
                    and k >= 1
                    and self._adjacent(ctx, k - 1, k)
                    and (zipf(low[k - 1]) < _CAPS_MAX_ZIPF)
                ):
                    yield "org", u[w[k - 1]].start, u[w[k]].end
                continue
            start, end = k, k
            while start >= 1 and caps[start - 1] and self._adjacent(ctx, start - 1, start):
                start -= 1
            while True:
                if end + 1 < len(w) and caps[end + 1] and self._adjacent(ctx, end, end + 1):
                    end += 1
                elif (end + 2 < len(w) and low[end + 1] in _CONNECTORS and caps[end + 2]
                      and self._adjacent(ctx, end, end + 1)
                      and self._adjacent(ctx, end + 1, end + 2)):  # fmt: skip
                    end += 2
                else:
                    break
            if end > start:
                yield "org", u[w[start]].start, u[w[end]].end

    # -- rare words ---------------------------------------------------------------------
    def rare(self, ctx: _Ctx) -> Iterator[tuple[str, int, int]]:
        if self.rare_zipf <= 0:
            return
        for i in ctx.words:
            text = ctx.units[i].text
            if text.isupper() and len(text) <= 4:
                continue  # an acronym ("IBAN", "MRN"): rare as a word, not as a label
            if len(text) >= 3 and _rare(_norm(text), self.rare_zipf):
                yield "rare", ctx.units[i].start, ctx.units[i].end


def _one_line(ctx: _Ctx, a: int, b: int) -> bool:
    """Words ``a`` to ``b`` stand on one line (a phrase never runs from one field to the
    next)."""
    return "\n" not in ctx.text[ctx.units[ctx.words[a]].start : ctx.units[ctx.words[b]].end]


def _rare(word: str, threshold: float) -> bool:
    parts = [p for p in word.split("-") if p]
    z = zipf(word)
    if len(parts) > 1:
        z = max(z, min(zipf(p) for p in parts))
    return z < threshold


# -- pattern rules -----------------------------------------------------------------------


def _phone_ok(candidate: str, before: str) -> bool:
    import phonenumbers

    digits = sum(c.isdigit() for c in candidate)
    if not 7 <= digits <= 15:
        return False
    groups = re.split(r"[ .\-/()]+", candidate.strip("+() "))
    if candidate.startswith("+"):  # "+CC digits" is a phone number whatever its plan says
        return digits >= 8
    cue = bool(_PHONE_CUE_RE.search(before))
    shaped = candidate.startswith(("0", "(")) and len(groups) >= 2
    if not (cue or shaped or (len(groups) >= 3 and digits >= 9)):
        return False
    for region in ("GB", "US", "DE", "FR", "NL", "IT", "ES", "IE", "AU", "IN", "SE", "PL"):
        try:
            if phonenumbers.is_possible_number(phonenumbers.parse(candidate, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


def _pattern_spans(text: str) -> Iterator[tuple[str, int, int]]:
    for m in _EMAIL_RE.finditer(text):
        yield "email", *m.span()
    for m in _URL_RE.finditer(text):
        yield "url", *m.span()
    for m in _IBAN_RE.finditer(text):
        if 15 <= sum(c.isalnum() for c in m.group()) <= 34:
            yield "iban", *m.span()
    for m in _CARD_RE.finditer(text):
        yield "card", *m.span()
    for m in _CARD_TAIL_RE.finditer(text):
        yield "card", *m.span("value")
    for m in _PHONE_RE.finditer(text):
        if _DATE_NUM_RE.fullmatch(m.group()):
            continue
        if _phone_ok(m.group(), text[max(0, m.start() - 40) : m.start()]):
            yield "phone", *m.span()
    yield from _id_spans(text)
    yield from _date_spans(text)


def _id_spans(text: str) -> Iterator[tuple[str, int, int]]:
    for m in _ID_CODE_RE.finditer(text):
        if len(m.group()) >= 4:
            yield "id", *m.span()
    for m in _ID_KEYWORD_RE.finditer(text):
        value = m.group("value")
        if sum(c.isdigit() for c in value) >= 3 and not re.fullmatch(r"\d{1,2}", value):
            yield "id", *m.span("value")
    for m in _SSN_RE.finditer(text):
        yield "id", *m.span()
    for m in _ID_PREFIXED_RE.finditer(text):
        if m.group("p") not in _NOT_ID_PREFIX:
            yield "id", *m.span()
    for m in _NL_POSTCODE_RE.finditer(text):
        yield "id", *m.span()
    for m in _UK_POSTCODE_RE.finditer(text):
        yield "id", *m.span()


_MONTH_ALONE_RE = re.compile(
    r"(?i:\b(?:in|during|since|until|till|by|last|next|early|late|mid|of|from|this)\s+)"
    rf"(?P<value>{_MONTH})"
)


def _date_spans(text: str) -> Iterator[tuple[str, int, int]]:
    for m in _DATE_WORDS_RE.finditer(text):
        yield "date", *m.span()
    for m in _MONTH_ALONE_RE.finditer(text):
        if m.group("value")[0].isupper():  # "in May", not "in may be"
            yield "date", *m.span("value")
    for m in _DATE_NUM_RE.finditer(text):
        parts = [int(p) for p in re.split(r"[-/.]", m.group())]
        if len(parts) == 3:
            y_first = len(m.group().split(m.group()[4])[0]) == 4 if len(m.group()) > 4 else 0
            d, mo = (parts[2], parts[1]) if y_first else (parts[0], parts[1])
            if (1 <= d <= 31 and 1 <= mo <= 12) or (1 <= mo <= 31 and 1 <= d <= 12):
                yield "date", *m.span()
        elif "." not in m.group() and _DATE_CUE_RE.search(text[max(0, m.start() - 30) : m.start()]):
            a, b = parts
            if (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31):
                yield "date", *m.span()


# -- Presidio glue -----------------------------------------------------------------------


def _presidio() -> Any:
    try:
        import presidio_analyzer
    except ImportError as e:  # pragma: no cover - a core dependency
        raise MissingDependencyError(
            "the detector needs presidio-analyzer", hint="pip install presidio-analyzer"
        ) from e
    return presidio_analyzer


@lru_cache(maxsize=1)
def _offline_suffixes() -> Any:
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def _presidio_recognizers(pa: Any) -> list[Any]:
    """Presidio's own e-mail, IBAN, card and URL recognisers, the e-mail check offline."""
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        UrlRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):  # type: ignore[misc]
        def validate_result(self, pattern_text: str) -> bool:
            return _offline_suffixes()(pattern_text.rsplit("@", 1)[-1]).fqdn != ""

    return [OfflineEmailRecognizer(), IbanRecognizer(), CreditCardRecognizer(), UrlRecognizer()]


class _SharedState(threading.local):
    ctx: _Ctx | None = None


class SensitivityDetector:
    """Typed sensitive spans of a text (see the module docstring).

    Args:
        terms: the user's own sensitive terms (case-insensitive, whole words; multi-word).
        rare_zipf: words rarer than this Zipf frequency are ``rare`` (0 turns it off).
        recognizers: extra Presidio recognisers (``EntityRecognizer`` instances).
        presidio_builtin: also run Presidio's e-mail, IBAN, card and URL recognisers.
    """

    def __init__(
        self,
        terms: Sequence[str] = (),
        rare_zipf: float = 2.5,
        recognizers: Sequence[Any] = (),
        presidio_builtin: bool = True,
    ) -> None:
        if isinstance(terms, str):
            raise TypeError("terms must be a sequence of strings, not a single string")
        for t in terms:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"terms must be non-empty strings, got {t!r}")
        if rare_zipf < 0:
            raise ValueError(f"rare_zipf must be >= 0, got {rare_zipf}")
        self.terms = tuple(terms)
        self.rare_zipf = rare_zipf
        self._rules = _WordRules(gazetteers(), rare_zipf)
        self._state = _SharedState()
        self._term_units = [
            tuple(_norm(u.text) for u in split_units(normalize(t)) if u.kind != "space")
            for t in dict.fromkeys(self.terms)
        ]
        self.engine = self._build_engine(list(recognizers), presidio_builtin)

    # -- public API ---------------------------------------------------------------------
    def entities(self, text: str) -> list[Entity]:
        """Non-overlapping typed spans of ``text`` (already :func:`normalize`-d), in order."""
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        units = split_units(text)
        self._state.ctx = _Ctx.build(text, units)
        try:
            results = self.engine.analyze(text=text, language="en", score_threshold=0.0)
        finally:
            self._state.ctx = None
        found = [
            Entity(r.start, r.end, _fedcot_type(r.entity_type), text[r.start : r.end], r.score)
            for r in results
            if r.end > r.start
        ]
        return _resolve(_trim(_split_at_line_breaks(found, text), text))

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, type)`` of every entity."""
        return [(e.start, e.end, e.type) for e in self.entities(text)]

    def detect(self, text: str, units: Sequence[Unit] | None = None) -> list[str | None]:
        """One entry per unit of ``split_units(text)``: the type of the entity it lies in."""
        units = list(units) if units is not None else split_units(text)
        kinds: list[str | None] = [None] * len(units)
        ents = self.entities(text)
        k = 0
        for i, u in enumerate(units):
            while k < len(ents) and ents[k].end <= u.start:
                k += 1
            if u.kind != "space" and k < len(ents) and ents[k].start < u.end:
                kinds[i] = ents[k].type
        return kinds

    # -- engine -------------------------------------------------------------------------
    def _build_engine(self, extra: list[Any], builtin: bool) -> Any:
        pa = _presidio()
        from presidio_analyzer.nlp_engine import SpacyNlpEngine

        class BlankEnglish(SpacyNlpEngine):  # type: ignore[misc]
            """spaCy's blank English tokenizer: no model to download."""

            def load(self) -> None:
                import spacy

                self.nlp = {"en": spacy.blank("en")}

        nlp = BlankEnglish()
        nlp.load()
        registry = pa.RecognizerRegistry(supported_languages=["en"])
        for r in [*(_presidio_recognizers(pa) if builtin else []), self._recognizer(pa), *extra]:
            registry.add_recognizer(r)
        return pa.AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])

    def _recognizer(self, pa: Any) -> Any:
        detector = self

        class FedcotRecognizer(pa.EntityRecognizer):  # type: ignore[misc]
            """fedcot's rules: patterns, numbers, words, terms (one pass over the units)."""

            def __init__(self) -> None:
                types = [f"FEDCOT_{t.upper()}" for t in ENTITY_TYPES]
                super().__init__(supported_entities=types, name="fedcot", version="2")

            def load(self) -> None:
                pass

            def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list:
                ctx = detector._state.ctx or _Ctx.build(text, split_units(text))
                return [
                    pa.RecognizerResult(f"FEDCOT_{kind.upper()}", s, e, 0.9)
                    for kind, s, e in detector._rule_spans(ctx)
                ]

        return FedcotRecognizer()

    def _rule_spans(self, ctx: _Ctx) -> Iterator[tuple[str, int, int]]:
        yield from self._term_spans(ctx)
        yield from _pattern_spans(ctx.text)
        for u in ctx.units:
            if u.kind == "number":
                yield "number", u.start, u.end
        yield from self._rules.medical(ctx)
        yield from self._rules.orgs(ctx)
        yield from self._rules.names(ctx)
        yield from self._rules.rare(ctx)

    def _term_spans(self, ctx: _Ctx) -> Iterator[tuple[str, int, int]]:
        idx = [i for i, u in enumerate(ctx.units) if u.kind != "space"]
        low = [_norm(ctx.units[i].text) for i in idx]
        for term in self._term_units:
            n = len(term)
            for p in range(len(low) - n + 1):
                if tuple(low[p : p + n]) == term:
                    yield "term", ctx.units[idx[p]].start, ctx.units[idx[p + n - 1]].end


def _fedcot_type(presidio_type: str) -> str:
    return PRESIDIO_TYPES.get(presidio_type, "id")


def _split_at_line_breaks(found: list[Entity], text: str) -> list[Entity]:
    """An entity never spans a line break: the fields of a prompt are one per line, and a
    stand-in must not merge two of them ("destroying\ntear" is two words on two lines).
    Each line's part of such a span keeps the type (more detection, never less)."""
    out = []
    for e in found:
        if "\n" not in e.text:
            out.append(e)
            continue
        start = e.start
        for piece in e.text.split("\n"):
            core = piece.strip()
            if any(ch.isalnum() for ch in core):
                s = start + piece.index(core)
                out.append(Entity(s, s + len(core), e.type, core, e.score))
            start += len(piece) + 1
    return out


def _trim(found: list[Entity], text: str) -> list[Entity]:
    """Drop trailing punctuation a pattern swallowed ("www.foo.com/u/mk.")."""
    out = []
    for e in found:
        end = e.end
        while end > e.start and text[end - 1] in ".,;:!?)'\"":
            end -= 1
        out.append(e if end == e.end else Entity(e.start, end, e.type, text[e.start : end]))
    return out


def _resolve(found: list[Entity]) -> list[Entity]:
    """Keep the highest-precedence, then longest, span wherever spans overlap."""
    order = sorted(found, key=lambda e: (_RANK.get(e.type, 99), -(e.end - e.start), e.start))
    kept: list[Entity] = []
    taken: list[tuple[int, int]] = []
    for e in order:
        if _overlaps(taken, e.start, e.end):
            continue
        kept.append(e)
        taken.append((e.start, e.end))
    return sorted(kept, key=lambda e: e.start)
