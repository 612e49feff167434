"""The command line: help, models, eval end to end on a tiny local model, error messages."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from fedcot.cli import app

from tiny_models import make_tiny_lm

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    model, tok = make_tiny_lm(seed=2)
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture()
def mc_file(tmp_path):
    p = tmp_path / "mc.jsonl"
    rows = [
        {
            "id": str(i),
            "question": f"Question number {i}?",
            "choices": ["red", "green", "blue"],
            "answer": ["red", "green", "blue"][i % 3],
        }
        for i in range(6)
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_help_lists_only_real_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("models", "eval", "demo"):
        assert cmd in res.output
    # Commands of later stages are not registered as empty placeholders.
    assert set(typer.main.get_command(app).commands) == {
        "models",
        "eval",
        "demo",
        "perturb",
        "privacy-eval",
        "distill",
        "mkt",
        "flower",
        "serve",
    }
    assert runner.invoke(app, ["--version"]).output.startswith("fedcot ")


def test_models_list_json():
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    names = {row["name"] for row in json.loads(res.output)}
    assert {"smollm2-135m-instruct", "gemma3-270m"} <= names


@pytest.mark.parametrize("method", ["generate", "likelihood"])
def test_eval_on_local_model_writes_predictions(tiny_folder, mc_file, tmp_path, method):
    out = tmp_path / "preds.jsonl"
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_folder),
            "--task",
            "multiple-choice",
            "--data",
            str(mc_file),
            "--method",
            method,
            "--max-new-tokens",
            "4",
            "--limit",
            "5",
            "-o",
            str(out),
        ],
        env={"FEDCOT_PROGRESS": "0"},
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and {"id", "gold", "prediction", "correct"} <= set(rows[0])
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["n"] == 5 and summary["method"] == method
    assert summary["correct"] == sum(r["correct"] for r in rows)


def test_errors_are_messages_with_hints(mc_file):
    res = runner.invoke(
        app,
        ["eval", "--model", "no-such-model", "--task", "multiple-choice", "--data", str(mc_file)],
    )
    assert res.exit_code == 2
    assert "unknown model 'no-such-model'" in res.output and "hint" in res.output
    res = runner.invoke(app, ["eval", "--set", "generation.max_new_tokens=0"])
    assert res.exit_code == 2 and "generation.max_new_tokens" in res.output
    res = runner.invoke(app, ["eval", "--task", "nonsense", "--data", str(mc_file)])
    assert res.exit_code == 2 and "nonsense" in res.output
    res = runner.invoke(
        app, ["eval", "--task", "multiple-choice", "--data", "/nonexistent/x.jsonl"]
    )
    assert res.exit_code == 2 and "/nonexistent/x.jsonl" in res.output


def test_distill_reports_config_errors_with_a_hint(tmp_path):
    res = runner.invoke(
        app,
        ["distill", "--strategy", "exponential", "--set", "server.kind=replay",
         "--output-dir", str(tmp_path / "r")],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "replay" in res.output and "hint" in res.output
    res = runner.invoke(app, ["distill", "--strategy", "magic"])
    assert res.exit_code == 2 and "strategy" in res.output


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


@pytest.fixture()
def query_file(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(json.dumps({"query": "is it blue", "passage": "It is blue.", "answer": "yes"}))
    return p


def test_field_flag_maps_columns(query_file):
    base = ["eval", "--model", "no-such-model", "--task", "yes-no", "--data", str(query_file)]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "missing field 'question'" in res.output
    assert "--field question=COLUMN" in _flat(res.output)
    assert '[fields] question = "COLUMN"' in _flat(res.output)  # brackets are not markup
    res = runner.invoke(app, [*base, "--field", "question=query"])
    # The data loaded; only the (deliberately) unknown model stops the run.
    assert res.exit_code == 2 and "unknown model 'no-such-model'" in res.output, res.output
    res = runner.invoke(app, [*base, "--field", "stem=query"])
    assert res.exit_code == 2 and "unknown data field 'stem'" in res.output
    assert "question" in res.output and "passage" in res.output
    for cmd in ("distill", "mkt"):  # every command that loads task data takes --field
        res = runner.invoke(app, [cmd, "--field", "stem=query"])
        assert res.exit_code == 2 and "unknown data field 'stem'" in res.output, cmd


def test_config_fields_table(query_file, tmp_path):
    cfg = tmp_path / "eval.toml"
    cfg.write_text(
        f'task = "yes-no"\ndata = "{query_file}"\n[model]\nmodel = "no-such-model"\n'
        '[fields]\nquestion = "query"\n'
    )
    res = runner.invoke(app, ["eval", "-c", str(cfg)])
    assert res.exit_code == 2 and "unknown model 'no-such-model'" in res.output, res.output
    cfg.write_text(cfg.read_text() + 'bogus = "x"\n')
    res = runner.invoke(app, ["eval", "-c", str(cfg)])
    assert res.exit_code == 2 and "fields" in res.output and "unknown data field" in res.output


def test_hints_print_brackets_literally(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a)
    )
    res = runner.invoke(app, ["eval", "--task", "yes-no", "--data", "hf:some/set"])
    assert res.exit_code == 2 and "pip install 'fedcot[hf]'" in res.output, res.output
