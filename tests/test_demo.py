"""`fedcot demo` end to end on the embedded models (tiny settings)."""

from __future__ import annotations

import json

import pytest

from fedcot.config import DemoConfig, load_config
from fedcot.demo import distill_config, run_demo


def test_demo_config_maps_onto_a_distill_run(tmp_path):
    cfg = load_config(
        DemoConfig, None, ["records=5", "privacy.epsilon=2", f"output_dir={tmp_path}"]
    )
    d = distill_config(cfg)
    assert d.task == "private-records" and d.data == "synthetic"
    assert d.train_limit == 5 and d.strategy == "adaptive" and d.privacy.epsilon == 2
    assert d.server.model == "qwen2.5-coder-0.5b-instruct"
    assert d.student.model == "smollm2-135m-instruct"
    assert d.decoder_name == "inverse-map"
    # the rationale task dominates (the demo scores it) and trains on rationales that agree
    assert d.train.alpha == 0.9 and d.filter
    base = distill_config(cfg, non_private=True)
    assert (base.strategy, base.stage, base.train_limit) == ("none", "rationales", 5)
    assert base.output_dir == tmp_path / "non_private" and base.server == d.server


@pytest.mark.models
def test_demo_runs_the_pipeline_and_leaks_no_sensitive_span(tmp_path):
    # The embedded student as both client and (small) server keeps this test fast; the
    # real demo uses qwen2.5-coder-0.5b-instruct as the server.
    cfg = load_config(
        DemoConfig,
        None,
        [
            "records=4",
            "test_records=2",
            "train_steps=1",
            "teacher.model=smollm2-135m-instruct",
            "generation.max_new_tokens=24",
            "filter=false",  # the tiny stand-in teacher rarely reaches an answer
            "eval_generation.max_new_tokens=6",
            f"output_dir={tmp_path / 'demo'}",
        ],
    )
    summary = run_demo(cfg)
    assert summary["records"] == 4 and summary["after"]["n"] == 2
    for key in ("rationales", "rationales_non_private"):
        assert summary[key]["requested"] == 4 and 0 <= summary[key]["fidelity"] <= 1
    assert summary["gain"]["low"] <= summary["gain"]["mean"] <= summary["gain"]["high"]
    assert (tmp_path / "demo" / "non_private" / "metrics.json").exists()
    got = summary["server_received"]
    assert got["prompts"] == 4 and got["spans"] > 20 and got["leaked_spans"] == 0
    assert summary["privacy"]["ledger"]["prompts"] == 4
    run = tmp_path / "demo"
    for name in ("summary.json", "metrics.json", "manifest.json", "plots/accuracy.png"):
        assert (run / name).exists(), name
    # The cache holds what the server saw: no original record text in it.
    cache = (run / "server_cache.jsonl").read_text()
    originals = [
        json.loads(x)["original"]
        for x in (run / "client_private" / "perturbations.jsonl").read_text().splitlines()
    ]
    assert not any(o in cache for o in originals)
