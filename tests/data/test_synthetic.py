"""Synthetic private records: determinism, exact spans, full annotation, correct answers."""

from __future__ import annotations

import itertools
import json
import re
from decimal import Decimal

import pytest

from fedcot.data import (
    CITIES,
    FIRST_NAMES,
    SPAN_KINDS,
    SURNAMES,
    TEMPLATE_NAMES,
    Span,
    generate_private_records,
    get_task,
    load_jsonl,
    write_jsonl,
)

N = 300


@pytest.fixture(scope="module")
def records():
    return generate_private_records(N, seed=7)


def test_deterministic_per_seed(records):
    assert generate_private_records(N, seed=7) == records
    assert generate_private_records(20, seed=7) == records[:20]  # record i ignores n
    other = generate_private_records(20, seed=8)
    assert [r.question for r in other] != [r.question for r in records[:20]]
    assert len({r.id for r in records}) == N
    assert generate_private_records(0) == []


def test_built_in_lists_are_large_and_varied():
    assert len(set(FIRST_NAMES)) >= 40 and len(set(SURNAMES)) >= 40
    assert len({c for c, _ in CITIES}) >= 20
    assert len(TEMPLATE_NAMES) >= 5


def test_templates_all_used(records):
    assert {r.meta["template"] for r in records} == set(TEMPLATE_NAMES)
    assert {r.meta["operation"] for r in records} >= {"sum", "difference", "product"}


def test_spans_are_exact_and_disjoint(records):
    for r in records:
        spans = [Span(**s) for s in r.meta["spans"]]
        assert spans, r.id
        for s in spans:
            assert r.question[s.start : s.end] == s.text, (r.id, s)
            assert s.kind in SPAN_KINDS
        ordered = sorted(spans, key=lambda s: s.start)
        for a, b in itertools.pairwise(ordered):
            assert a.end <= b.start, (r.id, a, b)
        kinds = {s.kind for s in spans}
        assert {"name", "age", "city"} <= kinds
        assert kinds & {"email", "phone"}  # every record has contact data


def _covered(r, start: int, end: int, kinds=None) -> bool:
    return any(
        s["start"] <= start and end <= s["end"] and (kinds is None or s["kind"] in kinds)
        for s in r.meta["spans"]
    )


def test_every_sensitive_item_is_annotated(records):
    for r in records:
        q = r.question
        for m in re.finditer(r"\d", q):  # every digit: ages, amounts, phones, IBANs, dates, ids
            assert _covered(r, m.start(), m.end()), (r.id, q, m.start())
        for m in re.finditer(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", q):
            assert _covered(r, m.start(), m.end(), {"email"}), (r.id, m.group(0))
            assert m.group(0).rsplit("@", 1)[1] in {"example.org", "example.com", "example.net"}
        for m in re.finditer(r"\+\d[\d ]+\d", q):
            assert _covered(r, m.start(), m.end(), {"phone"}), (r.id, m.group(0))
        for person in r.meta["people"]:
            for part in person["name"].split():
                for m in re.finditer(rf"(?<!\w){re.escape(part)}(?!\w)", q):
                    assert _covered(r, m.start(), m.end(), {"name", "email"}), (r.id, part)
        for city, _ in CITIES:
            for m in re.finditer(rf"(?<!\w){re.escape(city)}(?!\w)", q):
                assert _covered(r, m.start(), m.end(), {"city"}), (r.id, city)


def _iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def test_ibans_have_valid_check_digits(records):
    ibans = [s["text"] for r in records for s in r.meta["spans"] if s["kind"] == "iban"]
    assert len(ibans) > 20
    assert all(_iban_ok(i) for i in ibans)


def test_answers_recomputed_from_the_annotated_numbers(records):
    task = get_task("private-records")
    for r in records:
        spans = r.meta["spans"]
        xs = [Decimal(spans[i]["text"].replace(",", "")) for i in r.meta["operand_spans"]]
        xs += [Decimal(c) for c in r.meta["constants"]]
        assert all(spans[i]["kind"] in {"amount", "age"} for i in r.meta["operand_spans"])
        op = r.meta["operation"]
        if op == "sum":
            want = sum(xs)
        elif op == "difference":
            want = xs[0] - xs[1]
        elif op == "product":
            want = xs[0] * xs[1]
        else:
            assert op == "quotient"
            want = xs[0] / xs[1]
        assert Decimal(r.label) == want, (r.id, r.question, r.label)
        assert want > 0
        # The question's own numbers mention every operand; the rationale concludes the label.
        assert task.extract_answer(task.target_text(r, cot=True), r) == r.label
        assert task.is_correct(r.label, r)


def test_round_trip_through_jsonl(records, tmp_path):
    path = write_jsonl(records[:50], tmp_path / "private.jsonl")
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["spans"] == records[0].meta["spans"]
    back = load_jsonl(path, get_task("private-records"))
    assert back == records[:50]
