"""FedMKT rounds end to end on tiny random models: payloads, the KD loss, the protocol,
checkpoints and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedcot.errors import ConfigError
from fedcot.mkt.align import SparseRows
from fedcot.mkt.config import MKTConfig
from fedcot.mkt.payloads import AdapterMessage, LogitsMessage, SampleLogits, TensorBlob

from mkt_common import mkt_cfg, read_adapters, save_tiny

torch = pytest.importorskip("torch")


# --------------------------------------------------------------------------------------
# Payloads
# --------------------------------------------------------------------------------------


def _rows() -> SparseRows:
    ids = np.array([[5, 2, -1], [7, 1, 0]], dtype=np.int64)
    lp = np.array([[-0.1, -2.5, -np.inf], [-0.5, -1.0, -3.0]], dtype=np.float32)
    return SparseRows(ids=ids, logprobs=lp, transferred=np.array([True, False]))


def test_sample_logits_round_trip_through_json():
    s = SampleLogits.from_rows("ex-1", [11, 12], _rows(), 0.75)
    back = SampleLogits.model_validate_json(s.model_dump_json())
    r = back.rows()
    assert back.token_ids == [11, 12] and back.k == 3 and back.loss == 0.75
    np.testing.assert_array_equal(r.ids, _rows().ids)
    np.testing.assert_array_equal(r.transferred, [True, False])
    assert np.isneginf(r.logprobs[0, 2])
    # float16 on the wire: three significant digits survive
    np.testing.assert_allclose(r.logprobs[1], [-0.5, -1.0, -3.0], rtol=1e-3)


def test_payloads_reject_inconsistent_arrays():
    good = json.loads(SampleLogits.from_rows("a", [1, 2], _rows(), 1.0).model_dump_json())
    with pytest.raises(ValueError, match="topk_ids"):
        SampleLogits.model_validate({**good, "token_ids": [1, 2, 3]})
    with pytest.raises(ValueError, match="base64"):
        SampleLogits.model_validate({**good, "topk_ids": "not base64!"})
    with pytest.raises(ValueError, match="extra"):
        SampleLogits.model_validate({**good, "surprise": 1})
    with pytest.raises(ValueError, match="shape"):
        TensorBlob.model_validate({"shape": [2, 2], "data": "AAAA"})


def test_logits_message_is_sparse_and_counts_its_bytes():
    rows = SparseRows(
        ids=np.tile(np.arange(16), (10, 1)),
        logprobs=np.full((10, 16), -2.0, dtype=np.float32),
        transferred=np.ones(10, dtype=bool),
    )
    sample = SampleLogits.from_rows("s", list(range(10)), rows, 0.5)
    msg = LogitsMessage(
        round=1,
        sender="client-1",
        model="m",
        tokenizer_hash="h",
        vocab_size=49152,
        samples=[sample] * 4,
    )
    assert msg.dense_nbytes() == 40 * 49152 * 4
    assert msg.nbytes() == len(msg.model_dump_json())
    assert msg.nbytes() < msg.dense_nbytes() / 100
    np.testing.assert_array_equal(msg.losses(), [0.5] * 4)


def test_adapter_message_round_trip():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    m = AdapterMessage(
        round=1, sender="c", model="m", n_examples=3, tensors={"w": TensorBlob.from_array(a)}
    )
    back = AdapterMessage.model_validate_json(m.model_dump_json())
    np.testing.assert_array_equal(back.tensors["w"].array(), a)


# --------------------------------------------------------------------------------------
# The KD loss
# --------------------------------------------------------------------------------------


def test_kd_loss_terms_match_a_hand_computation():
    from fedcot.train.logit_kd import KDItem, kd_loss_terms

    torch.manual_seed(0)
    # Sequence of 5 tokens: prompt [3, 4, 5], target [6, 7] (7 = EOS). keep = 3 positions.
    logits = torch.randn(1, 3, 10)
    targets = SparseRows(
        ids=np.array([[6, 2, -1]]),
        logprobs=np.array([[math.log(0.6), math.log(0.2), -np.inf]], dtype=np.float32),
        transferred=np.array([True]),
    )
    item = KDItem([3, 4, 5, 6, 7], [-100, -100, -100, 6, 7], targets)
    ft, kd, n = kd_loss_terms(logits, [item])
    logp = torch.log_softmax(logits[0], -1)
    # logits[0, j] is position 2 + j; position 2 predicts token 3 (= 6), position 3 token 4.
    want_ft = -(logp[0, 6] + logp[1, 7]) / 2
    p = torch.tensor([0.75, 0.25])  # 0.6 and 0.2 renormalised over the row's K entries
    want_kd = -(p[0] * logp[0, 6] + p[1] * logp[0, 2])
    assert n == 1
    assert torch.allclose(ft, want_ft) and torch.allclose(kd, want_kd)
    # Without targets only L_FT remains.
    ft2, kd2, n2 = kd_loss_terms(logits, [KDItem(item.input_ids, item.labels)])
    assert n2 == 0 and float(kd2) == 0.0 and torch.allclose(ft2, want_ft)


def test_train_steps_is_seeded_and_learns():
    from fedcot.train.logit_kd import KDItem, train_steps
    from fedcot.train.lora import apply_lora
    from fedcot.train.multitask import TrainConfig

    from tiny_models import make_tiny_lm

    def run(seed: int):
        model, _ = make_tiny_lm(seed=1, chat=False)
        torch.manual_seed(0)
        model = apply_lora(model, TrainConfig(lora_r=4))
        items = [
            KDItem([5, 6, 7, 8, 9], [-100, -100, -100, 8, 9]),
            KDItem([5, 6, 10, 11], [-100, -100, 10, 11]),
        ]
        stats = train_steps(
            model, items, steps=15, batch_size=2, learning_rate=5e-3, seed=seed, pad_id=0
        )
        return stats, {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}

    s1, w1 = run(3)
    _, w2 = run(3)
    _, w3 = run(4)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w1[k], w3[k]) for k in w1)
    assert s1.history[-1]["ft"] < s1.history[0]["ft"]
    with pytest.raises(ConfigError, match="lambda"):
        train_steps(None, [], steps=1, batch_size=1, learning_rate=1e-3, lam=2.0)


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


def test_config_rules():
    assert MKTConfig(clients=[{"model": "a"}]).scenario == "one-to-one"
    assert MKTConfig(clients=[{"model": "a"}, {"model": "a"}]).scenario.endswith("homogeneous")
    assert MKTConfig(clients=[{"model": "a"}, {"model": "b"}]).scenario.endswith("heterogeneous")
    with pytest.raises(ValueError, match="homogeneous"):
        MKTConfig(clients=[{"model": "a"}, {"model": "b"}], fedavg=True)
    with pytest.raises(ValueError, match="distinct"):
        MKTConfig(clients=[{"name": "x"}, {"name": "x"}])
    assert MKTConfig().party_names() == ["server", "client-1", "client-2"]


# --------------------------------------------------------------------------------------
# Rounds on tiny models
# --------------------------------------------------------------------------------------


def test_mutual_rounds_end_to_end(tmp_path, tiny_parties, rte_folder):
    from fedcot.mkt import run_mkt

    seen: list[tuple[int, str, str]] = []
    cfg = mkt_cfg(tmp_path, tiny_parties, rte_folder)
    res = run_mkt(cfg, progress=False, on_phase=lambda r, p, ph: seen.append((r, p, ph)))
    run = Path(cfg.output_dir)
    for name in ("config.yaml", "manifest.json", "metrics.json", "state.json"):
        assert (run / name).is_file(), name
    assert (run / "plots" / "accuracy.png").stat().st_size > 1000
    # Every party evaluated before and after each round.
    assert sorted(res.metrics["rounds"]) == ["0", "1", "2"]
    for r in ("0", "1", "2"):
        assert set(res.metrics["rounds"][r]) == {"server", "client-1", "client-2"}
    # The protocol's order within a round.
    r1 = [(p, ph) for r, p, ph in seen if r == 1]
    assert r1 == [
        ("client-1", "local"),
        ("client-2", "local"),
        ("client-1", "logits"),
        ("client-2", "logits"),
        ("server", "distill"),
        ("server", "logits"),
        ("client-1", "distill"),
        ("client-2", "distill"),
        ("all", "evaluate"),
    ]
    # Traffic: every client sent its logits, the server sent its to both; all sparse.
    traffic = res.metrics["traffic"]["1"]
    for party in ("client-1", "client-2", "server"):
        assert 0 < traffic[party]["bytes"] < traffic[party]["dense_bytes"]
    training = {(e["party"], e["phase"]): e for e in res.metrics["training"]["1"]}
    assert training[("server", "distill from clients")]["steps"] == 2
    assert training[("client-1", "distill from server")]["steps"] == 2
    # Manifest: the public ids and the vocabulary maps.
    man = json.loads((run / "manifest.json").read_text())
    assert man["scenario"] == "one-to-many homogeneous"
    assert len(man["data"]["public_ids"]) == 6
    assert man["vocab_maps"]
    # The adapters changed in training and reload with plain PEFT.
    a1, a2 = read_adapters(run, 1), read_adapters(run, 2)
    assert set(a1) == {"server", "client-1", "client-2"}
    assert any(not np.array_equal(a1["server"][k], a2["server"][k]) for k in a1["server"])
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_parties["big"])
    PeftModel.from_pretrained(base, str(run / "rounds" / "round-2" / "server"))
    # An existing run is refused without --resume.
    with pytest.raises(ConfigError, match="already holds"):
        run_mkt(cfg, progress=False)


def test_resume_after_an_interrupted_round_matches_an_uninterrupted_run(
    tmp_path, tiny_parties, rte_folder
):
    from fedcot.mkt import run_mkt

    full = mkt_cfg(tmp_path / "a", tiny_parties, rte_folder)
    run_mkt(full, progress=False)

    class Boom(RuntimeError):
        pass

    def fail(r: int, party: str, phase: str) -> None:
        if (r, party, phase) == (2, "client-2", "distill"):
            raise Boom

    cut = mkt_cfg(tmp_path / "b", tiny_parties, rte_folder)
    with pytest.raises(Boom):
        run_mkt(cut, progress=False, on_phase=fail)
    state = json.loads((Path(cut.output_dir) / "state.json").read_text())
    assert state["completed_round"] == 1
    asked: list[tuple[int, str, str]] = []
    run_mkt(cut, resume=True, progress=False, on_phase=lambda r, p, ph: asked.append((r, p, ph)))
    assert {r for r, _, _ in asked} == {2}  # round 1 was not run again
    a = read_adapters(Path(full.output_dir), 2)
    b = read_adapters(Path(cut.output_dir), 2)
    for party in a:
        for k in a[party]:
            np.testing.assert_allclose(a[party][k], b[party][k], atol=1e-6, err_msg=party)
    # A resumed run must have the same config.
    other = mkt_cfg(tmp_path / "b", tiny_parties, rte_folder, top_k=3)
    with pytest.raises(ConfigError, match="different configuration"):
        run_mkt(other, resume=True, progress=False)


def test_fedavg_one_way_and_standalone(tmp_path, tiny_parties, rte_folder):
    from fedcot.mkt import run_mkt

    states = {}

    def grab(r: int, party: str, phase: str) -> None:
        if phase == "logits" and party.startswith("client"):
            states[party] = {k: v.copy() for k, v in engine_parties[party].adapter_state().items()}

    # FedAvg: at the time clients compute their logits, their adapters are identical.
    import fedcot.mkt.engine as rounds

    engine_parties: dict[str, object] = {}
    real_load = rounds.load_party

    def spy_load(cfg, name):
        p = real_load(cfg, name)
        engine_parties[name] = p
        return p

    rounds.load_party = spy_load
    try:
        cfg = mkt_cfg(tmp_path / "avg", tiny_parties, rte_folder, fedavg=True, rounds=1)
        res = run_mkt(cfg, progress=False, on_phase=grab)
    finally:
        rounds.load_party = real_load
    for k in states["client-1"]:
        np.testing.assert_allclose(states["client-1"][k], states["client-2"][k], atol=1e-7)
    assert res.metrics["traffic"]["1"]["fedavg_bytes"] > 0

    one = run_mkt(
        mkt_cfg(tmp_path / "one", tiny_parties, rte_folder, mode="one-way", rounds=1),
        progress=False,
    )
    t = one.metrics["traffic"]["1"]
    assert "server" in t and "client-1" not in t  # nothing flows client → server
    phases = {(e["party"], e["phase"]) for e in one.metrics["training"]["1"]}
    assert ("server", "public labels") in phases

    alone = run_mkt(
        mkt_cfg(tmp_path / "alone", tiny_parties, rte_folder, mode="standalone", rounds=1),
        progress=False,
    )
    assert alone.metrics["traffic"]["1"] == {}
    steps = {}
    for e in alone.metrics["training"]["1"]:
        steps[e["party"]] = steps.get(e["party"], 0) + e["steps"]
    # The same budget as a mutual round: local + distillation steps.
    assert steps == {"client-1": 4, "client-2": 4, "server": 2}


@pytest.mark.models
def test_rounds_with_two_real_tokenizers(tmp_path, rte_folder):
    """Tiny random models carrying the real SmolLM2 and Gemma-3 tokenizers: the vocabulary
    maps, alignment and transfer run across a byte-level BPE and a SentencePiece vocabulary."""
    from transformers import AutoTokenizer

    from fedcot.mkt import run_mkt
    from fedcot.models.registry import prepare

    smol = AutoTokenizer.from_pretrained(str(prepare("smollm2-135m-instruct")))
    gemma = AutoTokenizer.from_pretrained(str(prepare("gemma3-270m")))
    parties = {
        "big": save_tiny(tmp_path / "gemma-tiny", gemma, 3),
        "small": save_tiny(tmp_path / "smol-tiny", smol, 4),
    }
    cfg = mkt_cfg(tmp_path, parties, rte_folder, rounds=1)
    res = run_mkt(cfg, progress=False)
    rows = {(e["party"], e["phase"]): e for e in res.metrics["training"]["1"]}
    # Selected samples got KD rows in both directions.
    assert rows[("server", "distill from clients")]["steps"] == 2
    man = res.manifest
    assert man["parties"]["server"]["vocab_size"] == len(gemma)
    assert man["parties"]["client-1"]["vocab_size"] == len(smol)
    maps = man["vocab_maps"]
    assert len(maps) == 2  # SmolLM2 → Gemma and back (the two clients share a tokenizer)
    exact = sorted(m["exact"] for m in maps.values())
    assert exact[1] > 0.9  # SmolLM2 → Gemma: nearly every token exists in Gemma's vocabulary
    assert exact[0] > 0.1  # Gemma → SmolLM2: most of Gemma's 262k tokens do not
    # Most answer tokens were aligned one-to-one and carried a real distribution.
    for key in (("server", "distill from clients"), ("client-1", "distill from server")):
        if rows[key]["selected"]:
            assert rows[key]["transferred"] > 0, key
    t = res.metrics["traffic"]["1"]
    assert t["client-1"]["bytes"] * 1000 < t["client-1"]["dense_bytes"]


def test_cli_runs_and_resumes(tmp_path, tiny_parties, rte_folder):
    from typer.testing import CliRunner

    from fedcot.cli import app

    cfg = mkt_cfg(tmp_path, tiny_parties, rte_folder, rounds=1)
    from fedcot.config import dump_config

    path = tmp_path / "mkt.yaml"
    path.write_text(dump_config(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["mkt", "--config", str(path)])
    assert res.exit_code == 0, res.output
    assert "client-2" in res.output and "round 1" in res.output
    again = runner.invoke(app, ["mkt", "--config", str(path)])
    assert again.exit_code == 2 and "--resume" in again.output
    more = runner.invoke(app, ["mkt", "--config", str(path), "--resume"])
    assert more.exit_code == 0, more.output


def test_heterogeneous_clients_and_one_to_one(tmp_path, tiny_parties, rte_folder):
    from fedcot.mkt import run_mkt

    het = mkt_cfg(
        tmp_path / "het",
        tiny_parties,
        rte_folder,
        rounds=1,
        server={"model": tiny_parties["small"]},
        clients=[{"model": tiny_parties["big"]}, {"model": tiny_parties["small"]}],
    )
    res = run_mkt(het, progress=False)
    assert res.manifest["scenario"] == "one-to-many heterogeneous"
    # client-1 has its own tokenizer: both directions mapped; client-2 shares the server's.
    assert len(res.manifest["vocab_maps"]) == 3
    rows = {(e["party"], e["phase"]): e for e in res.metrics["training"]["1"]}
    assert rows[("client-1", "distill from server")]["steps"] == 2
    assert rows[("client-2", "distill from server")]["steps"] == 2

    one = mkt_cfg(
        tmp_path / "one",
        tiny_parties,
        rte_folder,
        rounds=1,
        clients=[{"model": tiny_parties["small"]}],
    )
    res = run_mkt(one, progress=False)
    assert res.manifest["scenario"] == "one-to-one"
    assert set(res.metrics["rounds"]["1"]) == {"server", "client-1"}
