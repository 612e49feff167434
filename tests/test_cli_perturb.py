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
        (["--set", "epsilon_normal=1", "--epsilon", "3", "x"], "epsilon_normal"),
    ],
)
def test_errors_name_the_problem(args, message):
    res = runner.invoke(app, ["perturb", *args], env=ENV)
    assert res.exit_code == 2 and message in res.output, res.output


def test_bad_input_file_names_the_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"text": 3}\n')
    res = runner.invoke(app, ["perturb", "-i", str(src), "--strategy", "none"], env=ENV)
    assert res.exit_code == 2 and "line 2" in res.output


@pytest.mark.models
def test_adaptive_on_real_space_leaks_no_sensitive_span(tmp_path):
    records = generate_private_records(20, seed=11)
    src = tmp_path / "records.jsonl"
    src.write_text("".join(json.dumps({"id": r.id, "text": r.question}) + "\n" for r in records))
    out, pmap = tmp_path / "out.jsonl", tmp_path / "map.jsonl"
    res = runner.invoke(
        app,
        ["perturb", "-i", str(src), "-o", str(out), "--private-map", str(pmap), "--epsilon", "3"],
        env=ENV,
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 20
    counts = [
        verbatim_leakage(r.question, row["text"], r.meta["spans"]) for r, row in zip(records, rows)
    ]
    leaked, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    # ε_S = 3 over the whole vocabulary: a sensitive span essentially never survives.
    assert total > 150 and leaked <= 0.05 * total, (leaked, total)
    ledger = json.loads(out.with_suffix(".ledger.json").read_text())
    assert ledger["summary"]["prompts"] == 20 and ledger["config"]["epsilon"] == 3.0
    assert "word:sensitive" in ledger["summary"]["by_class"]
    maps = [json.loads(x) for x in pmap.read_text().splitlines()]
    assert maps[0]["mapping"] and maps[0]["id"] == records[0].id
