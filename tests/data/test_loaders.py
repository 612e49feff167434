"""Loaders: the shared DSS/GSM8K/RTE folders, plain files, dispatch and malformed rows."""

from __future__ import annotations

import json
import logging

import pytest

from fedcot.data import (
    Example,
    FieldMapping,
    get_task,
    load_csv,
    load_dataset,
    load_dss,
    load_hf,
    load_jsonl,
    write_jsonl,
)
from fedcot.data.loaders import _split_choices, parse_field_flags, read_text_rows
from fedcot.errors import ConfigError, DataError, MissingDependencyError

# ---- shared DSS folders ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "split", "count"),
    [
        ("cqa", "test", 1221),
        ("cqa", "train", 9741),
        ("svamp", "test", 200),
        ("svamp", "train", 800),
    ],
)
def test_dss_counts(shared_datasets, name, split, count):
    examples = load_dss(shared_datasets, name, split)
    assert len(examples) == count
    assert sum(ex.rationale is not None for ex in examples) > 0.99 * count
    assert len({ex.id for ex in examples}) == count


def test_dss_cqa_first_row(shared_datasets):
    ex = load_dss(shared_datasets, "cqa", "test", limit=3)[0]
    assert ex.id == "080ef6941410139d6869e78122bc741e"
    assert ex.label == "wooded area" and len(ex.choices) == 5
    assert ex.rationale is not None and ex.rationale.startswith("The answer must be")
    assert ex.rationale.endswith("need.")  # cut before "So the answer is"
    assert ex.rationale_label == "wooded area"
    assert "extractive_explanation" in ex.meta


def test_dss_rationales_are_cut(shared_datasets):
    for name, split in (("cqa", "test"), ("svamp", "test"), ("anli1", "test")):
        for ex in load_dss(shared_datasets, name, split, limit=200):
            r = ex.rationale or ""
            assert "Q:" not in r and "So the answer is" not in r and "Premise:" not in r
            assert r == r.strip()
    for ex in load_dss(shared_datasets, "esnli", "test", limit=200):
        assert "Answer:" not in (ex.rationale or "")


def test_dss_svamp_labels_are_numbers(shared_datasets):
    ex = load_dss(shared_datasets, "svamp", "test", limit=2)
    assert ex[0].label == "450" and ex[0].meta["equation"] == "( 10.0 * 45.0 )"
    assert ex[0].rationale_label == "450"
    assert ex[1].label == "1"
    assert ex[0].question.endswith("How many seeds did they plant?")


def test_dss_nli_rows(shared_datasets):
    esnli = load_dss(shared_datasets, "esnli", "test", limit=2)
    assert esnli[0].label == "neutral" and esnli[0].premise and esnli[0].question
    assert esnli[0].rationale_label == "neutral"
    anli = load_dss(shared_datasets, "anli1", "test", limit=1)[0]
    assert anli.id == "4aae63a8-fcf7-406c-a2f3-50c31c5934a9" and anli.label == "entailment"
    assert anli.rationale_label == "contradiction" and "reason" in anli.meta


def test_dss_split_aliases_and_limit(shared_datasets):
    a = load_dss(shared_datasets, "esnli", "dev", rationales=False, limit=5)
    b = load_dss(shared_datasets, "esnli", "validation", rationales=False, limit=5)
    c = load_dss(shared_datasets, "esnli", "valid", rationales=False, limit=5)
    assert len(a) == 5 and a == b == c
    assert all(ex.rationale is None for ex in a)
    assert len(load_dss(shared_datasets, "anli1", "dev", limit=7)) == 7
    assert load_dss(shared_datasets, "cqa", "test", limit=0) == []
    with pytest.raises(DataError, match="no split 'train'"):
        load_dss(shared_datasets, "esnli", "train")
    with pytest.raises(DataError):
        load_dss(shared_datasets, "squad", "test")


def test_dss_limit_rows_match_full_load(shared_datasets):
    full = load_dss(shared_datasets, "cqa", "train")
    part = load_dss(shared_datasets, "cqa", "train", limit=1005)  # spans two rationale files
    assert part == full[:1005]


def _mini_dss(tmp_path, n=3, outputs=None):
    folder = tmp_path / "cqa"
    folder.mkdir()
    rows = [
        {"id": f"r{i}", "question": f"q{i}?", "choices": list("vwxyz"), "answer": "x"}
        for i in range(n)
    ]
    (folder / "cqa_test.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if outputs is not None:
        (folder / "llm").mkdir()
        (folder / "llm" / "test_CoT_0.json").write_text(json.dumps(outputs))
    return tmp_path


def test_dss_missing_or_misaligned_rationales(tmp_path):
    root = _mini_dss(tmp_path)
    with pytest.raises(DataError, match="rationale file is missing") as e:
        load_dss(root, "cqa", "test")
    assert "rationales=False" in str(e.value)
    assert all(ex.rationale is None for ex in load_dss(root, "cqa", "test", rationales=False))


def test_dss_rationale_count_mismatch(tmp_path):
    root = _mini_dss(tmp_path, outputs=["Because. So the answer is (c) x.\n\nQ: more"] * 2)
    with pytest.raises(DataError, match="expected a list of 3 completions"):
        load_dss(root, "cqa", "test")


def test_dss_parses_tiny_folder(tmp_path):
    outs = [
        "Because x. So the answer is (c) x.\n\nQ: next? So the answer is (a) v.",
        "Hedging. So the answer is either (a) v or (b) w.",
        "No conclusion at all.",
    ]
    exs = load_dss(_mini_dss(tmp_path, outputs=outs), "cqa", "test")
    assert [e.rationale_label for e in exs] == ["x", None, None]
    assert [e.rationale for e in exs] == ["Because x.", "Hedging.", "No conclusion at all."]


# ---- GSM8K and RTE -----------------------------------------------------------------------


def test_gsm8k_folder(shared_datasets):
    test = load_dataset(shared_datasets / "gsm8k", "gsm8k", "test")
    assert len(test) == 1319
    ex = test[0]
    assert ex.label == "18"
    assert ex.rationale is not None and "####" not in ex.rationale and "<<" not in ex.rationale
    assert ex.rationale.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")
    assert ex.rationale_label == "18" and ex.id == "gsm8k-test-0"
    train = load_dataset(shared_datasets, "gsm8k", "train", limit=50)
    assert len(train) == 50 and all(e.label.lstrip("-").replace(".", "").isdigit() for e in train)


def test_rte_folder_and_test_alias(shared_datasets, caplog):
    with caplog.at_level(logging.WARNING, logger="fedcot.data.loaders"):
        val = load_dataset(shared_datasets, "rte", "test")
    assert len(val) == 277
    assert "val.jsonl" in caplog.text
    assert {e.label for e in val} == {"entailment", "not_entailment"}
    assert val[0].premise and val[0].question == "Christopher Reeve had an accident."
    assert val[0].meta["idx"] == 0
    assert len(load_dataset(shared_datasets / "rte", "rte", "train")) == 2490
    assert len(load_dataset(shared_datasets / "rte", "rte", "validation", limit=10)) == 10


# ---- dispatch ----------------------------------------------------------------------------


def test_load_dataset_dispatch(shared_datasets):
    by_root = load_dataset(shared_datasets, "cqa", "test", limit=4)
    by_folder = load_dataset(shared_datasets / "cqa", get_task("cqa"), "test", limit=4)
    assert by_root == by_folder == load_dss(shared_datasets, "cqa", "test", limit=4)
    no_r = load_dataset(shared_datasets, "svamp", "test", limit=3, rationales=False)
    assert all(e.rationale is None for e in no_r)
    with pytest.raises(ConfigError, match="does not fit"):
        load_dataset(shared_datasets / "cqa", "svamp")
    with pytest.raises(DataError, match="no 'test' split"):
        load_dataset(shared_datasets, "math", "test")
    with pytest.raises(DataError, match="nowhere"):
        load_dataset(shared_datasets / "nowhere", "cqa")


def test_load_dataset_file_types(tmp_path):
    rows = [{"question": "2+2?", "answer": "4"}, {"question": "3*3?", "answer": 9}]
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    exs = load_dataset(p, "math")
    assert [e.label for e in exs] == ["4", "9"] and exs[0].id == "m-0"
    arr = tmp_path / "m.json"
    arr.write_text(json.dumps(rows))
    assert [e.label for e in load_dataset(arr, "math")] == ["4", "9"]
    csv_path = tmp_path / "mc.csv"
    csv_path.write_text(
        'question,answer,choices\n"Which, is red?",apple,apple|sky|sea\nSky?,sky,apple|sky|sea\n'
    )
    exs = load_dataset(csv_path, "multiple-choice")
    assert exs[0].question == "Which, is red?" and exs[0].choices == ["apple", "sky", "sea"]
    assert exs[1].label == "sky"
    assert len(load_dataset(csv_path, "multiple-choice", limit=1)) == 1


def test_field_mapping(tmp_path):
    p = tmp_path / "mmlu.csv"
    p.write_text("key,stem,A,B,C,gold,why\nk1,Pick B,x,y,z,B,because\n")
    m = FieldMapping(question="stem", label="gold", choices="A,B,C", id="key", rationale="why")
    ex = load_csv(p, "multiple-choice", m)[0]
    assert (ex.id, ex.question, ex.choices, ex.label) == ("k1", "Pick B", ["x", "y", "z"], "y")
    assert ex.rationale == "because" and ex.rationale_label is None
    q = tmp_path / "nli.jsonl"
    q.write_text(json.dumps({"p": "A dog runs.", "h": "An animal moves.", "y": 0}) + "\n")
    ex = load_jsonl(q, "nli", FieldMapping(question="h", label="y", premise="p"))[0]
    assert (ex.premise, ex.question, ex.label) == ("A dog runs.", "An animal moves.", "entailment")


def test_load_hf_requires_datasets():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="datasets"):
            load_hf("some/dataset", "cqa", "test")
        with pytest.raises(MissingDependencyError):
            load_dataset("hf:some/dataset", "cqa", "test")
    else:
        pytest.skip("datasets is installed; the hub is not reachable offline")


def test_write_jsonl_round_trip(tmp_path):
    exs = [
        Example("a", "Where?", "zoo", ["zoo", "park"], rationale="Animals.", rationale_label="zoo"),
        Example("b", "Which?", "park", ["zoo", "park"], meta={"source": "x", "n": 2}),
    ]
    path = write_jsonl(exs, tmp_path / "out" / "mc.jsonl")
    assert load_jsonl(path, "multiple-choice") == exs
    nli = [Example("c", "H.", "neutral", premise="P.", meta={"spans": [{"start": 0}]})]
    path = write_jsonl(nli, tmp_path / "nli.jsonl")
    assert "spans" in json.loads(path.read_text())
    assert load_jsonl(path, "esnli") == nli


# ---- malformed rows ----------------------------------------------------------------------

GOOD_MC = {"question": "Pick x", "choices": ["x", "y"], "answer": "x"}


def _jsonl(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize(
    ("task", "bad_line", "match"),
    [
        ("multiple-choice", "{not json", "invalid JSON"),
        ("multiple-choice", json.dumps({"question": "q", "choices": ["x"]}), "missing field"),
        ("multiple-choice", json.dumps({**GOOD_MC, "answer": "z"}), "not one of the choices"),
        ("math", json.dumps({"question": "q", "answer": "seven"}), "not a number"),
        ("math", json.dumps([1, 2]), "expected a JSON object"),
        ("nli", json.dumps({"premise": "p", "hypothesis": "h", "label": "banana"}), "not one of"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, task, bad_line, match):
    good = {
        "multiple-choice": json.dumps(GOOD_MC),
        "math": json.dumps({"question": "q", "answer": "1"}),
        "nli": json.dumps({"premise": "p", "hypothesis": "h", "label": 0}),
    }[task]
    path = _jsonl(tmp_path, "broken_rows.jsonl", [good, good, bad_line, good])
    with pytest.raises(DataError, match=match) as e:
        load_jsonl(path, task)
    assert "broken_rows.jsonl" in str(e.value) and "line 3" in str(e.value)
    assert e.value.hint
    # A limit that stops before the bad row reads the good rows only.
    assert len(load_jsonl(path, task, limit=2)) == 2


def test_malformed_csv_names_file_and_line(tmp_path):
    p = tmp_path / "broken.csv"
    p.write_text("question,answer\nq1,1\nq2,x + \nq3,3\n")
    with pytest.raises(DataError) as e:
        load_csv(p, "math")
    assert "broken.csv" in str(e.value) and "line 3" in str(e.value)
    p.write_text("question,answer\nq1,1\nq2\n")
    with pytest.raises(DataError, match="missing field 'answer'") as e:
        load_csv(p, "math")
    assert "line 3" in str(e.value)


def test_empty_and_missing_files(tmp_path):
    for name in ("empty.jsonl", "empty.csv"):
        p = tmp_path / name
        p.write_text("")
        with pytest.raises(DataError, match="no rows") as e:
            load_dataset(p, "math")
        assert name in str(e.value)
    with pytest.raises(DataError, match="no such file"):
        load_jsonl(tmp_path / "absent.jsonl", "math")
    with pytest.raises(ConfigError):
        load_jsonl(tmp_path / "empty.jsonl", "math", limit=-1)


# ---- data a user brings: TSV, --field mapping, passages, one-string choices ---------------


def test_tsv_file_and_split_folder(tmp_path):
    p = tmp_path / "mc.tsv"
    p.write_text("question\tanswer\tchoices\nWhich, is red?\tapple\tapple|sky|sea\n")
    ex = load_dataset(p, "multiple-choice")[0]
    assert ex.question == "Which, is red?" and ex.choices == ["apple", "sky", "sea"]
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "test.tsv").write_text("question\tanswer\n2+2?\t4\n3*3?\t9\n")
    assert [e.label for e in load_dataset(folder, "math", "test")] == ["4", "9"]
    rows = list(read_text_rows(folder / "test.tsv"))
    assert rows == [
        (2, {"question": "2+2?", "answer": "4"}),
        (3, {"question": "3*3?", "answer": "9"}),
    ]


def test_fields_override_some_columns(tmp_path):
    p = _jsonl(tmp_path, "q.jsonl", [json.dumps({"query": "2+2?", "gold": "4", "ctx": "Sums."})])
    with pytest.raises(DataError, match="missing field 'question'") as e:
        load_dataset(p, "math")
    assert "--field question=COLUMN" in e.value.hint and "FieldMapping" not in e.value.hint
    ex = load_dataset(p, "math", mapping={"question": "query", "answer": "gold", "passage": "ctx"})[
        0
    ]
    assert (ex.question, ex.label, ex.premise) == ("2+2?", "4", "Sums.")
    assert parse_field_flags(["question=query", "context=ctx"]) == {
        "question": "query",
        "premise": "ctx",
    }
    with pytest.raises(ConfigError, match="unknown data field 'stem'") as e:
        load_dataset(p, "math", mapping={"stem": "query"})
    assert "question" in e.value.hint and "passage" in e.value.hint
    with pytest.raises(ConfigError, match="no '='"):
        parse_field_flags(["question"])


def test_passage_is_kept_and_rendered(tmp_path, caplog):
    boolq = {"question": "is the sky green", "passage": "The sky is blue by day.", "answer": False}
    ex = load_dataset(_jsonl(tmp_path, "boolq.jsonl", [json.dumps(boolq)]), "yes-no")[0]
    assert ex.premise == "The sky is blue by day." and ex.label == "no"
    text = get_task("yes-no").input_text(ex)
    assert text == "Passage: The sky is blue by day.\nQuestion: is the sky green"
    row = {"question": "Pick x", "context": "Some context.", "choices": ["x", "y"], "answer": "x"}
    mc = load_dataset(_jsonl(tmp_path, "race.jsonl", [json.dumps(row)]), "multiple-choice")[0]
    assert get_task("multiple-choice").input_text(mc).startswith("Passage: Some context.\n")
    # A passage under a name nobody guesses: a warning says how to map it.
    long = "The club meets every Tuesday evening in the old library on the corner of Main Street."
    odd = _jsonl(
        tmp_path, "odd.jsonl", [json.dumps({"question": "q?", "background": long, "answer": 1})]
    )
    with caplog.at_level(logging.WARNING):
        ex = load_dataset(odd, "yes-no")[0]
    assert ex.premise is None and "--field premise=background" in caplog.text
    assert load_dataset(odd, "yes-no", mapping={"passage": "background"})[0].premise == long


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(A) foo (B) bar (C) baz (D) qux", ["foo", "bar", "baz", "qux"]),
        ("A) foo B) bar", ["foo", "bar"]),
        ("A. a red car B. Plan B. again C. done", ["a red car", "Plan B. again", "done"]),
        ("(a) New York, (b) Paris; (c) Rome", ["New York", "Paris", "Rome"]),
        ("x|y", ["x", "y"]),
        ('["x", "y"]', ["x", "y"]),
        # not markers: letters inside words and sentences, or a single marker
        ("A lot of apples. B. ok", ["A lot of apples. B. ok"]),
        ("Plan A) failed B) too", ["Plan A) failed B) too"]),
        ("(A) only one", ["(A) only one"]),
        ("Dr. Smith (B) bar", ["Dr. Smith (B) bar"]),
    ],
)
def test_one_string_choices_are_split_by_their_markers(raw, expected):
    assert _split_choices(raw) == expected


def test_one_string_choices_in_a_csv(tmp_path):
    p = tmp_path / "mc.csv"
    p.write_text('question,choices,answer\nPick,"(A) foo (B) bar (C) baz",B\n')
    ex = load_dataset(p, "multiple-choice")[0]
    assert ex.choices == ["foo", "bar", "baz"] and ex.label == "bar"


def test_missing_split_hint_names_the_split(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path, "math", "valid")
    assert "valid.jsonl" in e.value.hint and "{split}" not in e.value.hint
