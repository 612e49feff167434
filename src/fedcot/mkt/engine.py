"""FedMKT rounds: a server LLM and K client SLMs teach each other through top-K logits.

One round (``mode = "mutual"``), every party with its own model, tokenizer and LoRA:

1. each client fine-tunes on its private part (``local_steps``); with ``fedavg`` the
   clients' adapters are then averaged (homogeneous clients only);
2. each client sends a :class:`LogitsMessage`: for every public sample its answer tokens,
   its top-K log-probabilities for each of them and its loss on them;
3. the server aligns every client's tokens to its own (MinED vocabulary map + DP
   alignment), picks per sample the teacher to learn from (DualMinCE: the lowest-loss
   client, only where it beats the server's own loss) and distills into its LoRA with
   λ·L_FT + (1 − λ)·L_KD on the public set (``server_steps``);
4. the server sends its own :class:`LogitsMessage`; each client aligns, selects (the server,
   where it beats the client) and distills (``client_steps``);
5. every party is evaluated on the test set and checkpointed.

``one-way`` skips step 3's distillation (the server only fine-tunes on the public labels);
``standalone`` exchanges nothing and gives every party the same steps on its own data with
λ = 1 (the baseline).

The round is written once, :func:`run_rounds`, over a :class:`Transport`: the clients'
phases as the server sees them. :class:`InProcessTransport` runs them on parties in this
process (:func:`run_mkt`, ``fedcot mkt``); the Flower transport
(:mod:`fedcot.federation.flower`) sends them to SuperNodes. Either way the messages are the
typed payloads of :mod:`fedcot.mkt.payloads`, serialised to JSON and validated on arrival. A
run is resumed from the last finished round, and every phase is seeded by (seed, round,
party, phase), so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import zip_longest
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError
from rich.console import Console

from fedcot.config import dump_config
from fedcot.data.tasks import Example, Task, get_task
from fedcot.evaluation import EvalResult
from fedcot.mkt.config import MKTConfig
from fedcot.mkt.party import Party, PublicItem, load_party, split_data, vocab_maps
from fedcot.mkt.payloads import AdapterMessage, LogitsMessage, TensorBlob
from fedcot.mkt.steps import (
    SERVER_DISTILL,
    ClientReply,
    ClientSteps,
    Maps,
    PhaseCallback,
    average_adapters,
    distill_from,
    distill_phase,
    evaluate_phase,
    fedavg_phase,
    ignore_phase,
    local_phase,
    phase_seed,
    train_party,
)
from fedcot.runs import RunFolder as BaseRunFolder
from fedcot.runs import package_versions, read_json, write_json
from fedcot.train.lora import load_adapter, save_adapter

__all__ = [
    "InProcessTransport",
    "MKTResult",
    "Replies",
    "RunFolder",
    "ServerSide",
    "Transport",
    "accuracy_table",
    "run_mkt",
    "run_rounds",
]

Replies = dict[str, ClientReply]
"""Party name → its reply to one phase, in the config's order (failed parties left out)."""


# --------------------------------------------------------------------------------------
# Results and the run folder
# --------------------------------------------------------------------------------------


@dataclass
class MKTResult:
    """What a FedMKT run returns: accuracy per party per round and the traffic."""

    output_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, party: str, round_no: int) -> float:
        """Test accuracy of ``party`` after ``round_no`` (0 = before training)."""
        return float(self.metrics["rounds"][str(round_no)][party]["accuracy"])


def accuracy_table(metrics: Mapping[str, Any]) -> dict[str, dict[int, float]]:
    """party → round → accuracy, from a run's metrics.json."""
    table: dict[str, dict[int, float]] = {}
    for r, row in metrics.get("rounds", {}).items():
        for party, v in row.items():
            table.setdefault(party, {})[int(r)] = float(v["accuracy"])
    return table


class RunFolder(BaseRunFolder):
    """The server's run folder: config guard, state, metrics, checkpoints and manifest.

    ``config.yaml`` (a resume must use the same config), ``state.json`` (the last finished
    round and timings), ``metrics.json`` (accuracy per party per round, training log,
    traffic), ``rounds/round-N/<party>/`` (adapters), ``eval/round-N/<party>.jsonl``,
    ``plots/accuracy.png`` and ``manifest.json``.
    """

    def __init__(self, cfg: MKTConfig, *, resume: bool) -> None:
        super().__init__(Path(cfg.output_dir))
        self.open(dump_config(cfg), resume=resume)
        state = self.load_state()
        self.data: dict[str, Any] = (
            read_json(self.metrics)
            if self.metrics.exists() and state
            else {"rounds": {}, "traffic": {}, "training": {}}
        )
        """What metrics.json holds."""
        self.done = int(state.get("completed_round", 0))
        self.timings: dict[str, float] = dict(state.get("timings", {}))

    def checkpoint_dir(self, round_no: int) -> Path:
        return self.path / "rounds" / f"round-{round_no}"

    def eval_file(self, round_no: int, party: str) -> Path:
        return self.path / "eval" / f"round-{round_no}" / f"{party}.jsonl"

    def record_eval(self, round_no: int, party: str, result: Any) -> dict[str, Any]:
        """Store one party's evaluation (an ``EvalResult`` or its summary dict)."""
        if not isinstance(result, dict):
            result.write_predictions(self.eval_file(round_no, party))
            result = result.summary()
        self.data["rounds"].setdefault(str(round_no), {})[party] = result
        return result

    def save_metrics(self) -> None:
        write_json(self.metrics, self.data)

    def finish_round(
        self,
        round_no: int,
        parties: Sequence[Party],
        log: list[dict[str, Any]],
        traffic: dict[str, Any],
        seconds: float,
        **extra: Any,
    ) -> None:
        """Checkpoint ``parties`` atomically, then record the round as finished."""
        folder = self.checkpoint_dir(round_no)
        tmp = folder.with_name(f".{folder.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for p in parties:
            save_adapter(p.model, tmp / p.name)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        self.data["training"][str(round_no)] = log
        self.data["traffic"][str(round_no)] = traffic
        for key, value in extra.items():
            self.data.setdefault(key, {})[str(round_no)] = value
        self.timings[f"round_{round_no}_s"] = round(seconds, 2)
        self.save_metrics()
        self.save_state({"completed_round": round_no, "timings": self.timings})
        self.done = round_no

    def finish(self, manifest: dict[str, Any]) -> MKTResult:
        """Plot, write manifest.json and return the result."""
        _plot(self.data, self.plots / "accuracy.png")
        manifest = {**manifest, "timings": self.timings, "versions": package_versions("rapidfuzz")}
        write_json(self.manifest, manifest)
        return MKTResult(self.path, self.data, manifest)


def _plot(metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted(int(r) for r in metrics["rounds"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    parties: list[str] = []
    for r in rounds:
        parties += [p for p in metrics["rounds"][str(r)] if p not in parties]
    for p in parties:
        pts = [(r, metrics["rounds"][str(r)][p]) for r in rounds if p in metrics["rounds"][str(r)]]
        ax.plot([r for r, _ in pts], [100 * v["accuracy"] for _, v in pts], marker="o", label=p)
    ax.set_xlabel("round (0 = before)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(rounds)
    ax.set_title("FedMKT: accuracy per party")
    if parties:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def manifest_base(
    cfg: MKTConfig,
    parties: dict[str, dict[str, Any]],
    public: Sequence[Example],
    private_sizes: Sequence[int],
    n_test: int,
    map_info: dict[str, Any],
    engine: str,
) -> dict[str, Any]:
    """The manifest fields of every run."""
    return {
        "fedcot_command": "mkt",
        "engine": engine,
        "task": cfg.task,
        "scenario": cfg.scenario,
        "mode": cfg.mode,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "parties": parties,
        "data": {
            "public": len(public),
            "private": list(private_sizes),
            "test": n_test,
            "public_ids": [e.id for e in public],
        },
        "vocab_maps": map_info,
    }


def party_info(party: Party, role: str) -> dict[str, Any]:
    """A party's manifest entry."""
    return {
        "model": party.model_name,
        "tokenizer_hash": party.tokenizer_hash,
        "vocab_size": party.vocab_size,
        "role": role,
    }


# --------------------------------------------------------------------------------------
# The transport: the clients' phases as the server sees them
# --------------------------------------------------------------------------------------


class Transport(Protocol):
    """How the server reaches its clients. Each phase goes to the clients present and
    returns the replies of those that answered; a client that fails a phase is dropped for
    the rest of the round (recorded). Payloads are serialised :mod:`~fedcot.mkt.payloads`."""

    engine: str
    """The manifest's ``engine``."""

    def start_round(self, round_no: int) -> None:
        """Bring in the clients that (re)joined before this round."""

    def present(self) -> list[str]:
        """The clients still in the round, in the config's order."""

    def local(self, round_no: int, *, evaluate: bool) -> Replies:
        """Local training (:func:`~fedcot.mkt.steps.local_phase`)."""

    def fedavg(self, round_no: int, average: bytes) -> Replies:
        """The averaged adapter to every client (:func:`~fedcot.mkt.steps.fedavg_phase`)."""

    def distill(self, round_no: int, server_logits: bytes, *, evaluate: bool) -> Replies:
        """The server's logits to every client (:func:`~fedcot.mkt.steps.distill_phase`)."""

    def evaluate(self, round_no: int) -> Replies:
        """Every client's test evaluation after ``round_no`` (0: before training)."""

    def drop(self, round_no: int, party: str, phase: str, reason: str) -> None:
        """Drop a client whose reply was unusable, for the rest of the round."""

    def dropouts(self, round_no: int) -> list[dict[str, Any]] | None:
        """The round's drop-out events; ``None``: this transport never drops a client."""

    def round_traffic(self) -> dict[str, Any]:
        """Traffic entries of the transport's own since :meth:`start_round`."""

    def held_parties(self) -> list[Party]:
        """Clients held in this process (checkpointed in, and resumed from, the run
        folder with the server)."""

    def client_info(self) -> dict[str, dict[str, Any]]:
        """Every client of the config → its manifest entry (with its ``tokenizer_hash``)."""


class InProcessTransport:
    """Every client in this process: the phases run a step at a time across the clients
    (``on_phase`` sees the protocol's order); messages cross as JSON and are validated back."""

    engine = "in-process"

    def __init__(
        self,
        cfg: MKTConfig,
        clients: Sequence[ClientSteps],
        maps: Maps,
        texts: Mapping[str, Sequence[str]],
        on_phase: PhaseCallback = ignore_phase,
    ) -> None:
        self.cfg, self.clients, self.maps, self.texts, self.on_phase = (
            cfg,
            clients,
            maps,
            texts,
            on_phase,
        )

    def start_round(self, round_no: int) -> None:
        pass

    def present(self) -> list[str]:
        return [c.name for c in self.clients]

    def local(self, round_no: int, *, evaluate: bool) -> Replies:
        return local_phase(
            self.cfg, self.clients, round_no, evaluate=evaluate, on_phase=self.on_phase
        )

    def fedavg(self, round_no: int, average: bytes) -> Replies:
        msg = AdapterMessage.model_validate_json(average)
        return fedavg_phase(self.cfg, self.clients, round_no, msg, on_phase=self.on_phase)

    def distill(self, round_no: int, server_logits: bytes, *, evaluate: bool) -> Replies:
        msg = LogitsMessage.model_validate_json(server_logits)
        return distill_phase(
            self.clients,
            round_no,
            msg,
            self.maps,
            self.texts,
            evaluate=evaluate,
            on_phase=self.on_phase,
        )

    def evaluate(self, round_no: int) -> Replies:
        return evaluate_phase(self.clients)

    def drop(self, round_no: int, party: str, phase: str, reason: str) -> None:
        raise RuntimeError(f"round {round_no}: {party} failed {phase} in process: {reason}")

    def dropouts(self, round_no: int) -> list[dict[str, Any]] | None:
        return None

    def round_traffic(self) -> dict[str, Any]:
        return {}

    def held_parties(self) -> list[Party]:
        return [c.party for c in self.clients]

    def client_info(self) -> dict[str, dict[str, Any]]:
        return {c.name: party_info(c.party, "client") for c in self.clients}


# --------------------------------------------------------------------------------------
# The rounds
# --------------------------------------------------------------------------------------


class MessageError(ValueError):
    """A client's message does not fit the round (sender, round, tokenizer, samples)."""


@dataclass
class ServerSide:
    """What the server holds: its party, the task's public and test sets, the vocabulary
    maps from the clients' tokenizers to its own and the texts of their tokens."""

    party: Party
    task: Task
    public: list[Example]
    test: list[Example]
    maps: Maps
    map_info: dict[str, Any]
    texts: Mapping[str, Sequence[str]]
    progress: bool = False

    @property
    def name(self) -> str:
        return self.party.name

    @cached_property
    def items(self) -> list[PublicItem]:
        """The server's tokenisation of the public set."""
        return self.party.items(self.task, self.public)

    def evaluate(self) -> EvalResult:
        return self.party.evaluate(self.task, self.test, progress=self.progress)


def run_rounds(
    cfg: MKTConfig,
    transport: Transport,
    run: RunFolder,
    server: ServerSide,
    *,
    console: Console,
    on_phase: PhaseCallback | None = None,
) -> MKTResult:
    """Run (or resume) the rounds of ``cfg`` in ``run`` with the clients behind
    ``transport``; write the manifest and return the result."""
    on_phase = on_phase or ignore_phase
    if run.done:
        folder = run.checkpoint_dir(run.done)
        for p in [server.party, *transport.held_parties()]:
            load_adapter(p.model, folder / p.name)
        console.log(f"resuming after round {run.done} of {cfg.rounds}")
    elif "0" not in run.data["rounds"]:
        _evaluate_before(transport, run, server, console)
    hashes = {p: info["tokenizer_hash"] for p, info in transport.client_info().items()}
    for r in range(run.done + 1, cfg.rounds + 1):
        _round(cfg, transport, run, server, r, hashes, console, on_phase)
    parties = {server.name: party_info(server.party, "server"), **transport.client_info()}
    manifest = manifest_base(
        cfg,
        parties,
        server.public,
        [cfg.private_size] * len(cfg.clients),
        len(server.test),
        server.map_info,
        transport.engine,
    )
    return run.finish(manifest)


def _evaluate_before(
    transport: Transport, run: RunFolder, server: ServerSide, console: Console
) -> None:
    """Round 0: every party's accuracy before training."""
    run.record_eval(0, server.name, server.evaluate())
    for p, rep in transport.evaluate(0).items():
        if rep.eval is not None:
            run.record_eval(0, p, rep.eval)
    dropouts = transport.dropouts(0)
    if dropouts is not None:
        run.data.setdefault("dropouts", {})["0"] = dropouts
    run.save_metrics()
    _log_accuracy(console, 0, run.data["rounds"]["0"])


def _round(
    cfg: MKTConfig,
    transport: Transport,
    run: RunFolder,
    server: ServerSide,
    r: int,
    hashes: Mapping[str, str],
    console: Console,
    on_phase: PhaseCallback,
) -> None:
    """One round: clients learn locally (and send), the server learns, then teaches."""
    t0 = time.perf_counter()
    transport.start_round(r)
    want_eval = cfg.eval_each_round or r == cfg.rounds
    traffic: dict[str, Any] = {}
    finals = transport.local(r, evaluate=want_eval)
    log = _logs(finals)
    received: list[LogitsMessage] = []
    if cfg.mode != "standalone":
        received = _client_logits(cfg, transport, server, r, finals, hashes, traffic)
    log.append(_server_learns(cfg, server, received, r, on_phase))
    if cfg.mode != "standalone":
        finals = _teach_clients(cfg, transport, server, r, want_eval, traffic, on_phase)
        log += _logs(finals)
    if want_eval:
        on_phase(r, "all", "evaluate")
        run.record_eval(r, server.name, server.evaluate())
        for p, rep in finals.items():
            if rep.eval is not None:
                run.record_eval(r, p, rep.eval)
        _log_accuracy(console, r, run.data["rounds"][str(r)])
    traffic.update(transport.round_traffic())
    dropouts = transport.dropouts(r)
    extra = {} if dropouts is None else {"dropouts": dropouts, "clients": {"finished": [*finals]}}
    parties = [server.party, *transport.held_parties()]
    run.finish_round(r, parties, log, traffic, time.perf_counter() - t0, **extra)
    console.log(f"round {r}/{cfg.rounds} done in {run.timings[f'round_{r}_s']:.0f} s")


def _logs(replies: Replies) -> list[dict[str, Any]]:
    """The replies' training logs, step by step across the clients."""
    steps = zip_longest(*(rep.log for rep in replies.values()))
    return [entry for step in steps for entry in step if entry is not None]


def _client_logits(
    cfg: MKTConfig,
    transport: Transport,
    server: ServerSide,
    r: int,
    local: Replies,
    hashes: Mapping[str, str],
    traffic: dict[str, Any],
) -> list[LogitsMessage]:
    """The clients' logits that arrived intact (after FedAvg, with ``fedavg``); a client
    whose message is malformed is dropped."""
    replies = _fedavg(cfg, transport, server, r, local, traffic) if cfg.fedavg else local
    if cfg.mode != "mutual":
        return []
    received = []
    for p, rep in replies.items():
        raw = rep.payload or b""
        try:
            msg = LogitsMessage.model_validate_json(raw)
            _check_logits(msg, p, r, hashes[p], len(server.items))
        except (ValidationError, MessageError) as exc:
            reason = (
                f"{exc.error_count()} validation errors"
                if isinstance(exc, ValidationError)
                else str(exc)
            )
            transport.drop(r, p, "logits", f"bad logits: {reason}")
            continue
        traffic[p] = {"bytes": len(raw), "dense_bytes": msg.dense_nbytes()}
        received.append(msg)
    return received


def _check_logits(msg: LogitsMessage, party: str, round_no: int, tok_hash: str, n: int) -> None:
    if msg.sender != party or msg.round != round_no:
        raise MessageError(f"sent as {msg.sender!r} for round {msg.round}")
    if msg.tokenizer_hash != tok_hash:
        raise MessageError(f"tokenizer {msg.tokenizer_hash}, expected {tok_hash}")
    if len(msg.samples) != n:
        raise MessageError(f"{len(msg.samples)} samples, expected {n}")


def _fedavg(
    cfg: MKTConfig,
    transport: Transport,
    server: ServerSide,
    r: int,
    local: Replies,
    traffic: dict[str, Any],
) -> Replies:
    """Average the clients' adapters (weighted by private size) and send the average back;
    returns the clients' replies to it."""
    adapters: dict[str, AdapterMessage] = {}
    for p, rep in local.items():
        try:
            adapters[p] = AdapterMessage.model_validate_json(rep.payload or b"")
        except ValidationError as exc:
            transport.drop(r, p, "fedavg", f"bad adapter: {exc.error_count()} errors")
    if not adapters:
        return {}
    avg = average_adapters(list(adapters.values()))
    msg = AdapterMessage(
        round=r,
        sender=server.name,
        model=cfg.clients[0].model,
        n_examples=sum(a.n_examples for a in adapters.values()),
        tensors={k: TensorBlob.from_array(v) for k, v in avg.items()},
    )
    traffic["fedavg_bytes"] = sum(len(local[p].payload or b"") for p in adapters)
    return transport.fedavg(r, msg.model_dump_json().encode())


def _server_learns(
    cfg: MKTConfig,
    server: ServerSide,
    received: Sequence[LogitsMessage],
    r: int,
    on_phase: PhaseCallback,
) -> dict[str, Any]:
    """``mutual``: the server distills from the clients' logits (from the labels alone when
    none arrived); otherwise it fine-tunes on the public labels."""
    on_phase(r, server.name, "distill")
    party, seed, steps = server.party, phase_seed(cfg, r, 0, SERVER_DISTILL), cfg.train.server_steps
    if cfg.mode != "mutual":
        return train_party(
            cfg,
            party,
            server.items,
            steps=steps,
            lam=1.0,
            seed=seed,
            what="public labels",
            progress=server.progress,
        )
    own = (
        party.public_logits(server.items, k=cfg.top_k, loss_unit=cfg.loss_unit)[1]
        if received
        else None
    )
    return distill_from(
        cfg,
        party,
        server.items,
        own,
        received,
        server.maps,
        server.texts,
        steps=steps,
        seed=seed,
        what="distill from clients",
        progress=server.progress,
    )


def _teach_clients(
    cfg: MKTConfig,
    transport: Transport,
    server: ServerSide,
    r: int,
    evaluate: bool,
    traffic: dict[str, Any],
    on_phase: PhaseCallback,
) -> Replies:
    """The server's logits to every client present; returns their distillation replies."""
    on_phase(r, server.name, "logits")
    rows, losses = server.party.public_logits(server.items, k=cfg.top_k, loss_unit=cfg.loss_unit)
    msg = server.party.message(r, server.items, rows, losses)
    raw = msg.model_dump_json().encode()
    n = len(transport.present())
    if n:
        traffic[server.name] = {
            "bytes": len(raw) * n,
            "dense_bytes": msg.dense_nbytes() * n,
            "per_client_bytes": len(raw),
        }
    return transport.distill(r, raw, evaluate=evaluate)


def _log_accuracy(console: Console, round_no: int, row: Mapping[str, Any]) -> None:
    console.log(
        f"round {round_no}: "
        + ", ".join(f"{n} {100 * float(v['accuracy']):.1f} %" for n, v in row.items())
    )


# --------------------------------------------------------------------------------------
# Every party in this process
# --------------------------------------------------------------------------------------


def run_mkt(
    cfg: MKTConfig,
    *,
    resume: bool = False,
    console: Console | None = None,
    progress: bool = True,
    on_phase: PhaseCallback | None = None,
) -> MKTResult:
    """Run (or resume) FedMKT rounds as configured, every party in this process; see the
    module docstring and :class:`RunFolder` for what the run folder holds."""
    con = console or Console(stderr=True, quiet=not progress)
    task = get_task(cfg.task, answer_style="text")
    run = RunFolder(cfg, resume=resume)
    t0 = time.perf_counter()
    public, private, test = split_data(cfg, task)
    names = cfg.party_names()
    con.log(
        f"FedMKT · {cfg.task} · {cfg.scenario} · mode {cfg.mode} · {len(public)} public, "
        f"{len(cfg.clients)} × {cfg.private_size} private, {len(test)} test"
    )
    server = load_party(cfg, names[0])
    clients = [load_party(cfg, n) for n in names[1:]]
    pairs: list[tuple[Party, Party]] = []
    if cfg.mode != "standalone":
        for c in clients:
            pairs += [(server, c)] if cfg.mode == "one-way" else [(c, server), (server, c)]
    maps, map_info = vocab_maps(pairs, progress=progress)
    texts = {p.tokenizer_hash: p.texts for p in (server, *clients)}
    steps = [
        ClientSteps(cfg, c, i, task, public, part, test, progress=progress)
        for i, (c, part) in enumerate(zip(clients, private), start=1)
    ]
    side = ServerSide(server, task, public, test, maps, map_info, texts, progress)
    transport = InProcessTransport(cfg, steps, maps, texts, on_phase or ignore_phase)
    run.timings.setdefault("setup_s", round(time.perf_counter() - t0, 2))
    return run_rounds(cfg, transport, run, side, console=con, on_phase=on_phase)
