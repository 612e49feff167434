"""`fedcot demo` end to end on the embedded student (tiny settings)."""

from __future__ import annotations

import json

import pytest

from fedcot.config import DemoConfig, load_config
from fedcot.demo import run_demo


@pytest.mark.models
def test_demo_runs_and_leaks_no_sensitive_span(tmp_path):
    cfg = load_config(
        DemoConfig,
        None,
        ["records=3", "generation.max_new_tokens=8", f"output_dir={tmp_path}"],
    )
    summary = run_demo(cfg)
    assert summary["records"] == 3 and summary["zero_shot"]["n"] == 3
    leaks = summary["verbatim_sensitive_spans"]
    assert leaks["total"] > 20 and leaks["leaked"] <= 0.05 * leaks["total"]
    perturbed = [
        json.loads(x) for x in (tmp_path / "perturbed_records.jsonl").read_text().splitlines()
    ]
    originals = [
        json.loads(x) for x in (tmp_path / "private_records.jsonl").read_text().splitlines()
    ]
    assert len(perturbed) == 3 and set(perturbed[0]) == {"id", "text", "epsilon"}
    assert all(p["text"] != o["question"] for p, o in zip(perturbed, originals))
    ledger = json.loads((tmp_path / "privacy_ledger.json").read_text())
    assert ledger["summary"]["prompts"] == 3
    assert (
        json.loads((tmp_path / "summary.json").read_text())["privacy"]["config"]["epsilon"] == 3.0
    )
