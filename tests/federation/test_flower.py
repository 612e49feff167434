"""FedMKT over Flower: the app file, the server's bookkeeping of SuperNodes, and real
federations on 127.0.0.1 (a SuperLink, two SuperNodes, ``flwr run``) with a stopped and
resumed run, a client that dies mid-round, and the ``fedcot flower local`` command."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib

from fedcot.errors import ConfigError

from mkt_common import load_adapter, mkt_cfg, read_adapters

flwr = pytest.importorskip("flwr")
torch = pytest.importorskip("torch")

from fedcot.federation import flower  # noqa: E402
from fedcot.federation.flower import (  # noqa: E402
    FlowerRunError,
    FlowerRunOptions,
    PeerError,
    _Federation,
    _pack,
    _unpack,
    run_key,
    write_flower_app,
)

# --------------------------------------------------------------------------------------
# The app file and the run config
# --------------------------------------------------------------------------------------


def test_app_file_is_a_valid_flower_app_and_carries_the_config(tmp_path, tiny_parties):
    from flwr.cli.config_utils import load_and_validate

    cfg = mkt_cfg(tmp_path, tiny_parties, Path("rte-data"), rounds=3)
    path = write_flower_app(tmp_path / "app", cfg, reply_timeout=42, min_clients=1)
    config, warnings = load_and_validate(path)
    assert config is not None and not warnings
    app = config["tool"]["flwr"]["app"]
    assert app["components"]["serverapp"] == "fedcot.federation.flower:server_app"
    rc = app["config"]
    assert rc["reply-timeout"] == 42.0 and rc["min-clients"] == 1 and rc["resume"] is False
    # The run config alone rebuilds the FedMKT config; the run folder is made absolute.
    opts = FlowerRunOptions.from_run_config(rc)
    assert opts.config.rounds == 3 and opts.reply_timeout == 42.0
    assert Path(opts.config.output_dir).is_absolute()
    assert opts.config.output_dir == (tmp_path / "run").resolve()
    assert opts.config.clients[0].model == tiny_parties["small"]
    # The text is kept as written, so the same app gives the same client state folder.
    again = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]["config"]["mkt-config"]
    assert run_key(rc["mkt-config"]) == run_key(again)


def test_cli_flower_app_writes_the_app_and_says_what_to_start(tmp_path, tiny_parties):
    from typer.testing import CliRunner

    from fedcot.cli import app
    from fedcot.config import dump_config

    cfg_file = tmp_path / "mkt.yaml"
    cfg_file.write_text(dump_config(mkt_cfg(tmp_path, tiny_parties, tmp_path)))
    res = CliRunner().invoke(
        app,
        [
            "flower",
            "app",
            str(tmp_path / "app"),
            "-c",
            str(cfg_file),
            "--rounds",
            "5",
            "--reply-timeout",
            "60",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "flower-superlink" in res.output and 'party="client-2"' in res.output
    rc = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    opts = FlowerRunOptions.from_run_config(rc["config"])
    assert opts.config.rounds == 5 and opts.reply_timeout == 60.0
    bad = CliRunner().invoke(app, ["flower", "app", str(tmp_path / "x"), "--set", "rounds=0"])
    assert bad.exit_code == 2 and "rounds" in bad.output


def test_cli_table_names_dropouts_rejoins_and_restores(capsys, tmp_path, tiny_parties):
    from fedcot.cli import _print_mkt

    cfg = mkt_cfg(tmp_path, tiny_parties, tmp_path, rounds=2)
    row = {"accuracy": 0.5}
    metrics = {
        "rounds": {"1": {"server": row, "client-1": row}, "2": {"server": row}},
        "dropouts": {
            "1": [{"round": 1, "party": "client-2", "phase": "local", "reason": "no reply"}],
            "2": [
                {"round": 2, "party": "client-2", "phase": "rejoin"},
                {"round": 2, "party": "client-2", "phase": "restore", "reason": "restored 0"},
            ],
        },
    }
    _print_mkt(cfg, metrics, tmp_path, " over Flower")
    printed = capsys.readouterr().out
    assert "client-2 dropped at local: no reply" in printed
    assert "client-2 rejoined" in printed and "client-2 restored 0" in printed
    assert "dropped at rejoin" not in printed and "dropped at restore" not in printed
    assert "—" in printed  # client-2 has no accuracy in round 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mkt-config": ""}, "no 'mkt-config'"),
        ({"surprise": 1}, "unknown run config"),
        ({"min-clients": 5}, "min-clients"),
        ({"reply-timeout": 0.0}, "reply-timeout"),
        ({"mkt-config": "rounds: [1"}, "invalid FedMKT config"),
        ({"mkt-config": "rounds: 0"}, "invalid FedMKT config"),
    ],
)
def test_run_config_errors(tmp_path, tiny_parties, change, match):
    cfg = mkt_cfg(tmp_path, tiny_parties, tmp_path)
    path = write_flower_app(tmp_path / "app", cfg)
    rc = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]["config"]
    with pytest.raises(ConfigError, match=match):
        FlowerRunOptions.from_run_config({**rc, **change})


def test_client_worker_needs_a_known_party(tmp_path, tiny_parties):
    from fedcot.config import dump_config

    text = dump_config(mkt_cfg(tmp_path, tiny_parties, tmp_path))
    with pytest.raises(ConfigError, match="no 'party'"):
        flower.ClientWorker(text, {})
    with pytest.raises(ConfigError, match="not a client"):
        flower.ClientWorker(text, {"party": "server"})
    w = flower.ClientWorker(text, {"party": "client-2", "state-dir": str(tmp_path / "s")})
    assert w.index == 2 and w.root == tmp_path / "s" / run_key(text) / "client-2"
    assert w.rounds_saved() == [] and w.restore(3) == 0


# --------------------------------------------------------------------------------------
# The server's bookkeeping, against a scripted grid
# --------------------------------------------------------------------------------------


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


class ScriptedGrid:
    """Answers each message with ``script[node](message)``; ``None`` means no reply."""

    def __init__(self, script):
        self.script = script
        self.sent: list[tuple[int, str, float]] = []

    def get_node_ids(self):
        return list(self.script)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            self.sent.append((m.metadata.dst_node_id, m.metadata.message_type, timeout))
            reply = self.script[m.metadata.dst_node_id](m)
            if reply is not None:
                out.append(reply)
        return out


def _reply(header, payload=None):
    from flwr.app import Message

    return lambda m: Message(_pack(header, payload), reply_to=m)


def test_messages_pack_and_reject_foreign_or_failed_replies(task_identity):
    from flwr.app import ConfigRecord, Error, Message, RecordDict

    m = Message(_pack({"a": 1}, b"xy"), dst_node_id=5, message_type="train.local")
    assert _unpack(m) == ({"a": 1}, b"xy")
    with pytest.raises(PeerError, match="boom"):
        _unpack(Message(Error(code=3, reason="boom"), reply_to=m))
    with pytest.raises(PeerError, match="not a fedcot message"):
        _unpack(Message(RecordDict({"x": ConfigRecord({"a": 1})}), reply_to=m))
    with pytest.raises(PeerError, match="not a JSON object"):
        _unpack(Message(RecordDict({"fedcot": ConfigRecord({"header": "[1]"})}), reply_to=m))


def test_federation_greets_checks_drops_and_replaces_nodes(task_identity):
    from flwr.app import Error, Message
    from rich.console import Console

    hello = {"tokenizer_hash": "h1", "rounds_saved": []}
    grid = ScriptedGrid(
        {
            1: _reply({**hello, "party": "client-1"}),
            2: _reply({**hello, "party": "client-2", "tokenizer_hash": "other"}),  # wrong model
            3: _reply({**hello, "party": "client-9"}),  # not in the run
            4: lambda m: None,  # never answers
        }
    )
    fed = _Federation(
        grid, "cfg", {"client-1": "h1", "client-2": "h1"}, 5.0, 1.0, Console(quiet=True)
    )
    with pytest.raises(FlowerRunError, match="only 1 of the 2 clients"):
        fed.discover(0, need=2, wait=0)
    assert fed.nodes == {"client-1": 1} and fed.ignored == {2, 3, 4}
    assert all(t == 1.0 for _, kind, t in grid.sent if kind == flower.HELLO)
    # A restarted client-2 (a new node) is greeted; ignored nodes are not asked again.
    grid.script[5] = _reply({**hello, "party": "client-2"})
    grid.sent.clear()
    fed.discover(1, need=2, wait=0)
    assert fed.nodes == {"client-1": 1, "client-2": 5}
    assert [n for n, _, _ in grid.sent] == [5]
    # A phase: an error reply and a missing reply both drop the party, with the reason.
    grid.script[1] = lambda m: Message(Error(code=1, reason="out of memory"), reply_to=m)
    grid.script[5] = lambda m: None
    ok = fed.exchange(flower.LOCAL, 1, {"client-1": ({}, None), "client-2": ({}, None)}, "local")
    assert ok == {} and fed.nodes == {}
    reasons = {e["party"]: e["reason"] for e in fed.events}
    assert "out of memory" in reasons["client-1"]
    assert reasons["client-2"] == "no reply within 5 s"
    # Every message carried the config and the round; bytes were counted.
    assert fed.bytes_out > 0 and fed.bytes_in > 0


# --------------------------------------------------------------------------------------
# Real federations on 127.0.0.1
# --------------------------------------------------------------------------------------


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _completed(run: Path) -> int:
    try:
        return json.loads((run / "state.json").read_text())["completed_round"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _client_dir(state: Path, party: str) -> Path:
    (key,) = [p for p in state.iterdir() if p.is_dir()]
    return key / party


@contextlib.contextmanager
def _federation(tmp_path: Path, state: Path):
    """A SuperLink and the SuperNodes of client-1 and client-2 on 127.0.0.1."""
    from fedcot.federation.flower_local import LocalFederation

    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        for party in ("client-1", "client-2"):
            fed.start_supernode(party, state)
        yield fed


def _assert_same_as_in_process(cfg, state: Path, round_no: int, tmp_path: Path):
    """The adapters of every party after ``round_no`` equal an in-process run's, bit for bit
    (the server's in its run folder, each client's in its state folder). Returns that run."""
    from fedcot.mkt import run_mkt

    got = {"server": read_adapters(Path(cfg.output_dir), round_no)["server"]}
    for party in ("client-1", "client-2"):
        got[party] = load_adapter(_client_dir(state, party) / f"round-{round_no}")
    inproc = run_mkt(cfg.model_copy(update={"output_dir": tmp_path / "inproc"}), progress=False)
    expected = read_adapters(inproc.output_dir, round_no)
    assert set(expected) == set(got)
    for party, tensors in expected.items():
        for k, v in tensors.items():
            np.testing.assert_array_equal(got[party][k], v, err_msg=f"{party} {k}")
    return inproc


@pytest.mark.network
@pytest.mark.timeout(900)
def test_flower_rounds_stop_resume_and_match_the_in_process_engine(
    tmp_path, tiny_parties, rte_folder
):
    from fedcot.federation.flower_local import run_id_of

    cfg = mkt_cfg(tmp_path, tiny_parties, rte_folder, rounds=2)
    app = write_flower_app(tmp_path / "app", cfg, reply_timeout=300, wait_clients=120).parent
    run, state = Path(cfg.output_dir), tmp_path / "state"
    with _federation(tmp_path, state) as fed:
        # Run 1: stopped with `flwr stop` once round 1 is checkpointed (mid round 2).
        first = fed.submit(app)
        _wait(lambda: _completed(run) >= 1, 600, "round 1")
        assert _completed(run) == 1
        run_id = run_id_of(first.output())
        assert run_id is not None, first.output()
        stopped = fed.stop_run(run_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        first.wait(timeout=120)
        assert _completed(run) == 1
        # Run 2: resume=true picks up after round 1.
        res = fed.run(app, {"resume": True}, timeout=600)
        assert res.returncode == 0, res.output[-3000:]
    # `flwr run` exits 0 even when the ServerApp failed: show its output when it did.
    assert "resuming after round 1" in res.output, res.output[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["rounds"]) == ["0", "1", "2"]
    for r in ("0", "1", "2"):
        assert set(metrics["rounds"][r]) == {"server", "client-1", "client-2"}
    assert metrics["dropouts"]["2"] == []
    t = metrics["traffic"]["2"]
    assert 0 < t["client-1"]["bytes"] < t["client-1"]["dense_bytes"]
    assert t["flower"]["to_clients_bytes"] > t["server"]["bytes"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["engine"] == "flower"
    assert all(manifest["parties"][p]["flower_node"] for p in ("client-1", "client-2"))
    # Only the server's adapter is in the server's run folder; each client keeps its own.
    assert sorted(read_adapters(run, 2)) == ["server"]
    # The same rounds in one process give the same adapters, bit for bit.
    inproc = _assert_same_as_in_process(cfg, state, 2, tmp_path)
    assert metrics["rounds"]["2"]["server"]["accuracy"] == inproc.accuracy("server", 2)


@pytest.mark.network
@pytest.mark.timeout(900)
def test_a_client_that_dies_mid_round_is_dropped_and_rejoins(tmp_path, tiny_parties, rte_folder):
    cfg = mkt_cfg(tmp_path, tiny_parties, rte_folder, rounds=2)
    app = write_flower_app(
        tmp_path / "app", cfg, reply_timeout=40, hello_timeout=20, wait_clients=120
    ).parent
    run, state = Path(cfg.output_dir), tmp_path / "state"
    with _federation(tmp_path, state) as fed:
        flwr_run = fed.submit(app)
        # client-2's machine dies right after its local training of round 1 …
        _wait(
            lambda: (
                state.is_dir()
                and any(state.iterdir())
                and (_client_dir(state, "client-2") / "local-1").is_dir()
            ),
            600,
            "client-2's local phase",
        )
        fed.kill("client-2")
        # … and comes back as a new SuperNode while round 1 goes on without it.
        fed.start_supernode("client-2", state)
        # Bounded: wait() raises if the run has not ended 600 s later.
        assert flwr_run.wait(timeout=600) == 0, flwr_run.output()[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    (drop,) = metrics["dropouts"]["1"]
    assert drop["party"] == "client-2" and drop["phase"] in ("local", "distill")
    assert drop["reason"] == "no reply within 40 s"
    assert set(metrics["rounds"]["1"]) == {"server", "client-1"}
    assert metrics["clients"]["1"]["finished"] == ["client-1"]
    # Round 2: the new node was greeted; client-2 had no round-1 checkpoint, so it went on
    # from the newest it had (the initial adapter), and says so.
    assert set(metrics["rounds"]["2"]) == {"server", "client-1", "client-2"}
    phases = {(e["party"], e["phase"]) for e in metrics["dropouts"]["2"]}
    assert ("client-2", "rejoin") in phases and ("client-2", "restore") in phases
    assert (_client_dir(state, "client-2") / "round-2").is_dir()


@pytest.mark.network
@pytest.mark.timeout(900)
def test_cli_flower_local_runs_one_way_with_fedavg_over_tls(tmp_path, tiny_parties, rte_folder):
    import yaml
    from typer.testing import CliRunner

    from fedcot.cli import app
    from fedcot.config import dump_config

    cfg = mkt_cfg(tmp_path, tiny_parties, rte_folder, rounds=1, mode="one-way", fedavg=True)
    path = tmp_path / "mkt.yaml"
    path.write_text(dump_config(cfg))
    res = CliRunner().invoke(app, ["flower", "local", "-c", str(path), "--secure"])
    assert res.exit_code == 0, res.output
    run = Path(cfg.output_dir)
    pki = run / "flower" / "pki"
    assert {"ca.crt", "server.pem", "client-1.pub", "client-2.pub"} <= {
        p.name for p in pki.iterdir()
    }
    assert "over Flower" in res.output and "client-2" in res.output
    metrics = json.loads((run / "metrics.json").read_text())
    t = metrics["traffic"]["1"]
    assert t["fedavg_bytes"] > 0 and "client-1" not in t  # one-way: no client logits
    # FedAvg: both clients distilled from the same averaged adapter and the same targets.
    a = load_adapter(_client_dir(run / "flower" / "clients", "client-1") / "local-1")
    b = load_adapter(_client_dir(run / "flower" / "clients", "client-2") / "local-1")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-7)
    assert yaml.safe_load((run / "config.yaml").read_text())["mode"] == "one-way"
    # An existing run is refused without --resume, before anything starts.
    again = CliRunner().invoke(app, ["flower", "local", "-c", str(path)])
    assert again.exit_code == 2 and "already holds" in again.output


@pytest.mark.network
@pytest.mark.timeout(300)
def test_secure_superlink_refuses_unregistered_and_plaintext_supernodes(tmp_path):
    from fedcot.federation.flower_local import LocalFederation

    with LocalFederation(tmp_path / "fed", secure=True) as fed:
        fed.start_superlink()
        rogue = fed.start_supernode("client-1", tmp_path / "s", register=False, max_retries=2)
        assert rogue.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in (fed.logs / "client-1.log").read_text()
        fed.secure = False  # a node that speaks plain HTTP to the TLS port
        plain = fed.start_supernode("client-2", tmp_path / "s", max_retries=2)
        assert plain.wait(timeout=120) != 0
        fed.secure = True
        listed = fed._flwr("supernode", "list", "local", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        nodes = json.loads(listed.stdout)
        assert nodes["success"] and nodes["nodes"] == []


@pytest.mark.network
@pytest.mark.timeout(600)
def test_standalone_over_flower_matches_the_in_process_baseline(tmp_path, tiny_parties, rte_folder):
    cfg = mkt_cfg(tmp_path, tiny_parties, rte_folder, rounds=1, mode="standalone")
    app = write_flower_app(tmp_path / "app", cfg, reply_timeout=300, wait_clients=120).parent
    state = tmp_path / "state"
    with _federation(tmp_path, state) as fed:
        res = fed.run(app, timeout=500)
    assert res.returncode == 0, res.output[-3000:]
    metrics = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    # Nothing but the work orders and the training logs: no logits, no adapters.
    assert set(metrics["traffic"]["1"]) == {"flower"}
    steps = {}
    for e in metrics["training"]["1"]:
        steps[e["party"]] = steps.get(e["party"], 0) + e["steps"]
    assert steps == {"client-1": 4, "client-2": 4, "server": 2}
    _assert_same_as_in_process(cfg, state, 1, tmp_path)
