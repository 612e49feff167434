"""`fedcot perturb`: files in and out, the ledger, errors; one run on the real SmolLM2 space."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedcot.cli import app
from fedcot.data.synthetic import generate_private_records
from fedcot.privacy.attacks import verbatim_leakage

runner = CliRunner()
ENV = {"FEDCOT_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}


def test_none_strategy_round_trip(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"id": "a", "text": "Maria paid 12 EUR."})
        + "\n\n"
        + json.dumps({"text": "Bob"})
        + "\n"
    )
    res = runner.invoke(app, ["perturb", "-i", str(src), "--strategy", "none"], env=ENV)
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (tmp_path / "in.perturbed.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "line3"]
    assert rows[0]["text"] == "Maria paid 12 EUR." and set(rows[0]) == {"id", "text", "epsilon"}
    assert (tmp_path / "in.perturbed.ledger.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilon", "0", "x"], "epsilon"),
        (["--epsilon", "nan", "x"], "epsilon"),
        (["--strategy", "magic", "x"], "strategy"),
        ([], "either a TEXT"),
        (["--strategy", "exponential", "--set", "epsilon_normal=1", "x"], "epsilon_normal"),
        (["--bad-rows", "maybe", "x"], "bad-rows"),
    ],
)
def test_errors_name_the_problem(args, message):
    res = runner.invoke(app, ["perturb", *args], env=ENV)
    assert res.exit_code == 2 and message in res.output, res.output


def test_bad_input_file_names_the_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"text": 3}\n')
    res = runner.invoke(app, ["perturb", "-i", str(src), "--strategy", "none"], env=ENV)
    assert res.exit_code == 2 and "line 2" in " ".join(res.output.split())


def test_the_three_bad_inputs_of_the_audit(tmp_path):
    # 1. A lone surrogate in a JSONL text: no crash, a readable private map.
    src = tmp_path / "lone.jsonl"
    src.write_text('{"id": "s1", "text": "Maria \\ud800 Keller paid 40 EUR."}\n')
    pmap = tmp_path / "map.jsonl"
    res = runner.invoke(app, ["perturb", "-i", str(src), "--private-map", str(pmap)], env=ENV)
    assert res.exit_code == 0, res.output
    assert json.loads(pmap.read_text())["id"] == "s1"
    out = json.loads((tmp_path / "lone.perturbed.jsonl").read_text())
    assert "Keller" not in out["text"] and "\ufffd" in out["text"]
    # 2. --strategy none writes strict JSON (no Infinity).
    res = runner.invoke(app, ["perturb", "-i", str(src), "--strategy", "none"], env=ENV)
    assert res.exit_code == 0, res.output
    for f in ("lone.perturbed.jsonl", "lone.perturbed.ledger.json"):
        text = (tmp_path / f).read_text()
        assert "Infinity" not in text and "NaN" not in text
        for line in text.splitlines() if f.endswith("jsonl") else [text]:
            json.loads(line)
    # 3. An empty row: named by file, line and id; skipped and counted on request.
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": "" if i == 5 else f"row {i}"}) + "\n"
                for i in range(300))
    )  # fmt: skip
    res = runner.invoke(app, ["perturb", "-i", str(rows), "--strategy", "none"], env=ENV)
    said = " ".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 2 and "rows.jsonl, line 6 (id r5): empty text" in said, said
    res = runner.invoke(
        app, ["perturb", "-i", str(rows), "--strategy", "none", "--bad-rows", "skip"], env=ENV
    )
    assert res.exit_code == 0 and "skipped 1 bad row" in res.output, res.output
    done = (tmp_path / "rows.perturbed.jsonl").read_text().splitlines()
    ledger = json.loads((tmp_path / "rows.perturbed.ledger.json").read_text())
    assert len(done) == 299 and ledger["skipped_rows"] == [f"{rows}, line 6 (id r5)"]


def test_adaptive_output_and_an_explicit_seed_warns(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "Lars Brennan, aged 66, has asthma."}) + "\n")
    res = runner.invoke(app, ["perturb", "-i", str(src)], env=ENV)
    assert res.exit_code == 0, res.output
    row = json.loads((tmp_path / "in.perturbed.jsonl").read_text())
    assert "Brennan" not in row["text"] and "has" in row["text"]
    ledger = json.loads((tmp_path / "in.perturbed.ledger.json").read_text())
    assert ledger["summary"]["randomness"] == "OS entropy"
    disclosed = ledger["prompts"]["a"]["disclosed"]
    assert disclosed["person"] == 1 and disclosed["condition"] == 1  # asthma replaced
    res = runner.invoke(app, ["perturb", "-i", str(src), "--seed", "0"], env=ENV)
    assert res.exit_code == 0 and "replay" in res.output, res.output
    ledger = json.loads((tmp_path / "in.perturbed.ledger.json").read_text())
    assert "not for private data" in ledger["summary"]["randomness"]


@pytest.mark.models
def test_exponential_on_real_space_leaks_no_sensitive_span(tmp_path):
    records = generate_private_records(20, seed=11)
    src = tmp_path / "records.jsonl"
    src.write_text("".join(json.dumps({"id": r.id, "text": r.question}) + "\n" for r in records))
    out, pmap = tmp_path / "out.jsonl", tmp_path / "map.jsonl"
    res = runner.invoke(
        app,
        [
            "perturb",
            "-i",
            str(src),
            "-o",
            str(out),
            "--private-map",
            str(pmap),
            "--strategy",
            "exponential",
            "--epsilon",
            "3",
        ],
        env=ENV,
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 20
    counts = [
        verbatim_leakage(r.question, row["text"], r.meta["spans"]) for r, row in zip(records, rows)
    ]
    leaked, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    # ε = 3 over the whole vocabulary: a sensitive span essentially never survives.
    assert total > 150 and leaked <= 0.05 * total, (leaked, total)
    ledger = json.loads(out.with_suffix(".ledger.json").read_text())
    assert ledger["summary"]["prompts"] == 20 and ledger["config"]["epsilon"] == 3.0
    assert "word" in ledger["summary"]["ldp_by_class"]
    maps = [json.loads(x) for x in pmap.read_text().splitlines()]
    assert maps[0]["mapping"] and maps[0]["id"] == records[0].id
