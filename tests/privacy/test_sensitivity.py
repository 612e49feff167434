"""The detector: normalisation, typed entities, the audit's hard cases, plug-ins, recall."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from fedcot.privacy.annotated import (
    detector_recall,
    flag_rate,
    from_records,
    load_annotated,
    parse_marked,
)
from fedcot.privacy.sensitivity import (
    ENTITY_TYPES,
    SensitivityDetector,
    normalize,
    normalize_with_offsets,
)
from fedcot.privacy.units import split_units

DATA = Path(__file__).parent / "data"
INDEPENDENT = [DATA / "pii_independent_a.jsonl", DATA / "pii_independent_b.jsonl"]


@pytest.fixture(scope="module")
def det() -> SensitivityDetector:
    return SensitivityDetector()


def types_of(det: SensitivityDetector, text: str) -> dict[str, str]:
    return {e.text: e.type for e in det.entities(normalize(text))}


def test_normalize_removes_invisible_characters_and_folds_forms():
    assert normalize("Ma\u200brta Il\u2060ves") == "Marta Ilves"
    assert normalize("ＡＢＣ１２３") == "ABC123"  # full-width forms (NFKC)
    assert normalize("Maria \ud800 Keller") == "Maria \ufffd Keller"  # a lone surrogate
    text, off = normalize_with_offsets("a\u200bb")
    assert text == "ab" and off == [0, 1, 1, 2]


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("Call me on +31 6 7336 1286 tomorrow.", {"+31 6 7336 1286": "phone"}),
        ("lars brennan called from lyon", {"lars brennan": "person", "lyon": "place"}),
        ("Patient Ma\u200brta Ilves, aged 44.", {"Marta Ilves": "person", "44": "number"}),
        ("PATIENT: JOHANNA WEISS, DOB 04/07/1961", {"JOHANNA WEISS": "person"}),
        ("see https://lars-brennan.photo/cv", {"https://lars-brennan.photo/cv": "url"}),
        ("mail tomasz.novak@example.org now", {"tomasz.novak@example.org": "email"}),
        ("Known asthma and hypertension; on metformin.", {"asthma": "condition",
         "hypertension": "condition", "metformin": "drug"}),
        ("She has anemia and a migraine.", {"anemia": "condition", "migraine": "condition"}),
        ("Card 4111 1111 1111 1111, IBAN DE44 5001 0517 5407 3249 31.",
         {"4111 1111 1111 1111": "card", "DE44 5001 0517 5407 3249 31": "iban"}),
        ("Seen on 12 March 2024 and 2024-11-05.", {"12 March 2024": "date", "2024-11-05": "date"}),
        ("Claim CLM-2023-88412, MRN 00482913.", {"CLM-2023-88412": "id", "00482913": "id"}),
        ("Dear Mr O'Neil,", {"O'Neil": "person"}),
        ("Type 2 diabetes since 2019.", {"Type 2 diabetes": "condition", "2019": "number"}),
    ],
)  # fmt: skip
def test_the_audits_hard_cases(det, text, expect):
    found = types_of(det, text)
    for span, kind in expect.items():
        # The span itself, or an entity of that type that contains it ("MRN 00482913").
        hits = [t for s, t in found.items() if span in s]
        assert found.get(span) == kind or hits == [kind], (span, found)


def test_entities_do_not_overlap_and_types_are_known(det):
    text = normalize("Lars Brennan (lars.brennan@gmail.com, +44 7700 900123) paid €1,250.75.")
    ents = det.entities(text)
    assert all(e.type in ENTITY_TYPES for e in ents)
    assert all(a.end <= b.start for a, b in itertools.pairwise(ents))
    assert all(text[e.start : e.end] == e.text for e in ents)
    kinds = det.detect(text)
    assert len(kinds) == len(split_units(text))


def test_no_entity_spans_a_line_break(det):
    # A CQA question with its choices one per line: "destroying" and "tear" (a condition
    # head, as in "ACL tear") are two choices, not the injury "destroying tear". A span
    # across the line break once merged two fields into one stand-in.
    text = (
        "In basic training they build you up only to do what?\n"
        "destroying\ntear down\nraze\nmutilate\ndemolition\n"
        "Patient Anna Berg has a\nbroken arm"
    )
    ents = det.entities(normalize(text))
    assert ents, "the detector found nothing at all"
    assert all("\n" not in e.text for e in ents)
    assert ("broken arm", "condition") in {(e.text, e.type) for e in ents}


def test_a_span_across_lines_keeps_each_lines_part():
    from fedcot.privacy.sensitivity import Entity, _split_at_line_breaks

    text = "Lars\n Brennan\n\n"
    parts = _split_at_line_breaks([Entity(0, 13, "person", text[:13], 0.8)], text)
    assert [(p.text, p.type, text[p.start : p.end]) for p in parts] == [
        ("Lars", "person", "Lars"),
        ("Brennan", "person", "Brennan"),
    ]


def test_user_terms_and_presidio_recognisers_plug_in():
    from presidio_analyzer import Pattern, PatternRecognizer

    nhs = PatternRecognizer(
        supported_entity="UK_NHS", patterns=[Pattern("nhs", r"\b\d{3} \d{3} \d{4}\b", 0.9)]
    )
    det = SensitivityDetector(terms=["Project Falcon"], recognizers=[nhs], rare_zipf=0)
    found = types_of(det, "the project falcon file, NHS 943 476 5919")
    assert found["project falcon"] == "term"
    assert found["943 476 5919"] in ("id", "phone")  # typed by the plug-in or our rules
    with pytest.raises(TypeError):
        SensitivityDetector(terms="Acme")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SensitivityDetector(terms=[" "])


def test_the_detector_never_touches_the_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    det = SensitivityDetector()
    assert types_of(det, "write to ana@example.co.uk or see www.example.com/x")


def test_parse_marked_round_trip():
    text, spans = parse_marked("Hi {{person:Ann Lee}}, {{number:3}} items.")
    assert text == "Hi Ann Lee, 3 items."
    assert [(text[s:e], k) for s, e, k in spans] == [("Ann Lee", "person"), ("3", "number")]


EXACT = {"email": 1.0, "phone": 1.0, "iban": 1.0, "card": 1.0, "url": 1.0, "number": 1.0}


def assert_recall(det, items, overall: float, floors: dict[str, float]) -> None:
    """Floors sit just under the measured values, so a regression fails; the targets of the
    privacy issue (99 % overall, 97 % per type) are reported in docs/benchmarks.md."""
    rep = detector_recall(det, items)
    assert rep.recall() >= overall
    for kind, floor in {**EXACT, **floors}.items():
        assert rep.recall(kind) >= floor, (kind, rep.recall(kind))


def test_recall_on_the_independent_set(det):
    """120 hand-annotated texts (a development set: its misses shaped the rules)."""
    items = [t for f in INDEPENDENT for t in load_annotated(f)]
    assert len(items) >= 100
    assert_recall(det, items, 0.975, {"date": 0.98, "id": 0.96, "person": 0.95, "drug": 0.95,
                                      "org": 0.94, "place": 0.93, "condition": 0.95})  # fmt: skip


def test_recall_on_the_held_out_set(det):
    """60 texts written after the detector was developed and never used to tune it: the
    honest recall on unseen text."""
    items = load_annotated(DATA / "pii_heldout_c.jsonl")
    assert len(items) == 60
    assert_recall(det, items, 0.95, {"id": 0.97, "date": 0.97, "person": 0.94, "drug": 0.95,
                                     "place": 0.93, "condition": 0.91, "org": 0.84})  # fmt: skip


def test_recall_on_the_generated_records(det):
    from fedcot.data import generate_private_records

    recs = generate_private_records(200, 0)
    items = from_records([r.question for r in recs], [r.meta["spans"] for r in recs])
    assert detector_recall(det, items).recall() >= 0.995


def test_false_positive_rate_on_cqa(det):
    from fedcot.privacy.evaluate import load_texts

    texts, _, _ = load_texts("cqa", limit=300)
    rate, _ = flag_rate(det, texts)
    assert rate <= 0.03
