"""FedMKT over Flower: the rounds of ``fedcot mkt`` with every party in its own process.

The Flower app is two objects, referenced from a Flower App's ``pyproject.toml`` (written by
``fedcot flower app``):

- ``server_app`` (a :class:`flwr.serverapp.ServerApp`) runs on the SuperLink's machine. It
  holds the server LLM and drives the rounds: it asks each SuperNode which party it is,
  sends the work of each phase as a Flower message, distils from the clients' logits and
  checkpoints itself after every round in the run folder.
- ``client_app`` (a :class:`flwr.clientapp.ClientApp`) runs under each client's
  ``flower-supernode``. It holds one client SLM and its private data part; its adapter
  never leaves the machine (except with ``fedavg``), and is checkpointed after every
  phase in the node's state folder, because Flower starts a fresh process per message.

The messages carry the typed payloads of :mod:`fedcot.mkt.payloads` (serialised JSON)
plus a small JSON header. One round (``mutual``)::

    server → clients  train.local    (round, round to restore)
    clients → server  LogitsMessage  (after local training; AdapterMessage with fedavg,
                                      then train.fedavg → LogitsMessage)
    server            distils from the clients (DualMinCE), computes its own logits
    server → clients  train.distill  + the server's LogitsMessage
    clients → server  training log and test accuracy

Every phase uses the seeds of the in-process engine, so a Flower run ends where
``fedcot mkt`` does (tested). A client that does not answer within ``reply-timeout``
seconds, or answers with an error, is dropped for the rest of the round and recorded in
``metrics.json`` (``dropouts``); the others go on. A restarted SuperNode is greeted again
at the next round and restores its last checkpoint. ``resume=true`` continues a run
from the server's last finished round.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console

from fedcot.config import dump_config
from fedcot.errors import ConfigError, FedcotError
from fedcot.mkt.config import MKTConfig
from fedcot.mkt.payloads import AdapterMessage, LogitsMessage, TensorBlob

__all__ = [
    "RUN_CONFIG_DEFAULTS",
    "ClientWorker",
    "FlowerRunError",
    "FlowerRunOptions",
    "client_app",
    "run_flower_server",
    "server_app",
    "write_flower_app",
]

RECORD = "fedcot"
"""The name of the one ConfigRecord every fedcot message carries."""

HELLO = "query.hello"
LOCAL = "train.local"
FEDAVG = "train.fedavg"
DISTILL = "train.distill"
EVALUATE = "evaluate"

RUN_CONFIG_DEFAULTS: dict[str, Any] = {
    "mkt-config": "",
    "output-dir": "",
    "resume": False,
    "reply-timeout": 1800.0,
    "hello-timeout": 120.0,
    "min-clients": 0,
    "wait-clients": 300.0,
}
"""The Flower run config of the app (``flwr run --run-config 'resume=true'`` overrides):
the FedMKT config text, the server's run folder (empty: the config's), resume, seconds to
wait for a phase's replies and for a greeting, the clients needed to start (0: all of the
config's) and how long to wait for them."""


class FlowerRunError(FedcotError):
    """The Flower run cannot go on (too few clients, an inconsistent federation)."""


class PeerError(Exception):
    """A peer answered with an error or with a malformed message."""


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


def _pack(header: Mapping[str, Any], payload: bytes | None = None) -> Any:
    from flwr.app import ConfigRecord, RecordDict

    rec: dict[str, Any] = {"header": json.dumps(dict(header))}
    if payload is not None:
        rec["payload"] = payload
    return RecordDict({RECORD: ConfigRecord(rec)})


def _unpack(msg: Any) -> tuple[dict[str, Any], bytes | None]:
    """(header, payload) of a fedcot message; :class:`PeerError` for anything else."""
    if msg.has_error():
        raise PeerError(f"error {msg.error.code}: {msg.error.reason}")
    try:
        rec = msg.content[RECORD]
        header = json.loads(rec["header"])
    except Exception as exc:
        raise PeerError(f"not a fedcot message ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise PeerError("the message header is not a JSON object")
    payload = rec.get("payload")
    if payload is not None and not isinstance(payload, bytes):
        raise PeerError("the message payload is not bytes")
    return header, payload


def _size(header: Mapping[str, Any], payload: bytes | None) -> int:
    return len(json.dumps(dict(header))) + (len(payload) if payload else 0)


def parse_config_text(text: str) -> MKTConfig:
    """The FedMKT config from its YAML (or JSON) text, as the server sends it."""
    try:
        data = yaml.safe_load(text) or {}
        return MKTConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"invalid FedMKT config in the Flower run: {exc}") from None


@dataclass
class FlowerRunOptions:
    """The app's run config, validated (keys and defaults: :data:`RUN_CONFIG_DEFAULTS`)."""

    config: MKTConfig
    resume: bool
    reply_timeout: float
    hello_timeout: float
    min_clients: int
    wait_clients: float

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FlowerRunOptions:
        unknown = set(run_config) - set(RUN_CONFIG_DEFAULTS)
        if unknown:
            raise ConfigError(f"unknown run config keys: {sorted(unknown)}")
        rc = {**RUN_CONFIG_DEFAULTS, **run_config}
        text = str(rc["mkt-config"])
        if not text.strip():
            raise ConfigError(
                "the run config holds no 'mkt-config'",
                hint="write the app with `fedcot flower app DIR --config mkt.toml`",
            )
        cfg = parse_config_text(text)
        if rc["output-dir"]:
            cfg = cfg.model_copy(update={"output_dir": Path(str(rc["output-dir"]))})
        opts = cls(
            config=cfg,
            resume=bool(rc["resume"]),
            reply_timeout=float(rc["reply-timeout"]),
            hello_timeout=float(rc["hello-timeout"]),
            min_clients=int(rc["min-clients"]),
            wait_clients=float(rc["wait-clients"]),
        )
        if opts.reply_timeout <= 0 or opts.hello_timeout <= 0 or opts.wait_clients < 0:
            raise ConfigError("reply-timeout and hello-timeout must be > 0, wait-clients ≥ 0")
        if not 0 <= opts.min_clients <= len(cfg.clients):
            raise ConfigError(f"min-clients must be between 0 and {len(cfg.clients)}")
        return opts


# --------------------------------------------------------------------------------------
# The client side
# --------------------------------------------------------------------------------------


def run_key(config_text: str) -> str:
    """The folder a client keeps one run's checkpoints in (same config → same folder)."""
    return hashlib.sha256(config_text.encode()).hexdigest()[:16]


class ClientWorker:
    """One client's side of the protocol; its state lives on disk between messages.

    ``node_config`` is the SuperNode's ``--node-config``: ``party`` (required, e.g.
    ``"client-1"``), ``state-dir`` (checkpoints; default ``$FEDCOT_HOME/flower``) and
    ``data`` (this machine's copy of the dataset, overriding the config's path).
    """

    def __init__(self, config_text: str, node_config: Mapping[str, Any]) -> None:
        from fedcot.models.registry import fedcot_home

        cfg = parse_config_text(config_text)
        party = node_config.get("party")
        names = cfg.party_names()
        if not party:
            raise ConfigError(
                "this SuperNode has no 'party' in its node config",
                hint="start it with --node-config 'party=\"client-1\"'",
            )
        if str(party) not in names[1:]:
            raise ConfigError(
                f"party {party!r} is not a client of this run", hint=f"clients: {names[1:]}"
            )
        if node_config.get("data"):
            cfg = cfg.model_copy(update={"data": str(node_config["data"])})
        self.cfg = cfg
        self.name = str(party)
        self.index = names.index(self.name)
        state = node_config.get("state-dir") or fedcot_home() / "flower"
        self.root = Path(str(state)).expanduser() / run_key(config_text) / self.name
        self._party: Any = None
        self._data: Any = None

    # -- state ---------------------------------------------------------------------------
    @property
    def party(self) -> Any:
        if self._party is None:
            from fedcot.mkt.rounds import load_party

            self._party = load_party(self.cfg, self.name)
        return self._party

    def _task_data(self) -> tuple[Any, list[Any], list[Any], list[Any]]:
        if self._data is None:
            from fedcot.data.tasks import get_task
            from fedcot.mkt.rounds import split_data

            task = get_task(self.cfg.task, answer_style="text")
            public, private, test = split_data(self.cfg, task)
            self._data = (task, public, private[self.index - 1], test)
        return self._data

    def rounds_saved(self) -> list[int]:
        """Rounds this client holds a finished checkpoint of."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = re.fullmatch(r"round-(\d+)", p.name)
            if m and (p / "adapter_model.safetensors").is_file():
                found.append(int(m.group(1)))
        return sorted(found)

    def restore(self, round_no: int) -> int:
        """Load the newest checkpoint at or before ``round_no`` (0: the seeded LoRA init)."""
        best = max((r for r in self.rounds_saved() if r <= round_no), default=0)
        if best:
            self.party.load(self.root / f"round-{best}")
        return best

    def _save(self, tag: str) -> None:
        from fedcot.mkt.rounds import save_adapter

        save_adapter(self.party, self.root / tag)

    def _load_local(self, round_no: int) -> None:
        folder = self.root / f"local-{round_no}"
        if not (folder / "adapter_model.safetensors").is_file():
            raise FlowerRunError(f"{self.name} has no local phase of round {round_no} to go on")
        self.party.load(folder)

    def _evaluate(self, round_no: int) -> dict[str, Any]:
        task, _, _, test = self._task_data()
        res = self.party.evaluate(task, test, progress=False)
        res.write_predictions(self.root / "eval" / f"round-{round_no}.jsonl")
        return res.summary()

    def _logits(self, round_no: int) -> bytes:
        task, public, _, _ = self._task_data()
        items = self.party.items(task, public)
        rows, losses = self.party.public_logits(
            items, k=self.cfg.top_k, loss_unit=self.cfg.loss_unit
        )
        return self.party.message(round_no, items, rows, losses).model_dump_json().encode()

    # -- handlers ------------------------------------------------------------------------
    def hello(self, header: Mapping[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        from fedcot.mkt.rounds import Vocab

        model = self.cfg.clients[self.index - 1].model
        vocab = Vocab.load(model)
        return {
            "party": self.name,
            "model": model,
            "tokenizer_hash": vocab.tokenizer_hash,
            "n_private": self.cfg.private_size,
            "rounds_saved": self.rounds_saved(),
        }, None

    def local(self, header: Mapping[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        from fedcot.mkt.rounds import CLIENT_DISTILL, LOCAL, phase_seed, train_party

        cfg, r = self.cfg, int(header["round"])
        restored = self.restore(int(header["restore"]))
        task, public, private, _ = self._task_data()
        log = [
            train_party(
                cfg,
                self.party,
                self.party.items(task, private),
                steps=cfg.train.local_steps,
                lam=1.0,
                seed=phase_seed(cfg, r, self.index, LOCAL),
                what="private data",
                progress=False,
            )
        ]
        out: dict[str, Any] = {"log": log, "restored": restored}
        if cfg.mode == "standalone":
            log.append(
                train_party(
                    cfg,
                    self.party,
                    self.party.items(task, public),
                    steps=cfg.train.client_steps,
                    lam=1.0,
                    seed=phase_seed(cfg, r, self.index, CLIENT_DISTILL),
                    what="public labels",
                    progress=False,
                )
            )
            self._save(f"round-{r}")
            if header.get("evaluate"):
                out["eval"] = self._evaluate(r)
            return out, None
        self._save(f"local-{r}")
        if cfg.fedavg:
            from fedcot.mkt.rounds import adapter_message

            msg = adapter_message(self.party, r, len(private))
            return out, msg.model_dump_json().encode()
        if cfg.mode == "mutual":
            return out, self._logits(r)
        return out, None

    def fedavg(
        self, header: Mapping[str, Any], payload: bytes | None
    ) -> tuple[dict[str, Any], bytes | None]:
        r = int(header["round"])
        if payload is None:
            raise PeerError("train.fedavg carries no adapter")
        avg = AdapterMessage.model_validate_json(payload)
        self._load_local(r)
        self.party.set_adapter_state({k: v.array() for k, v in avg.tensors.items()})
        self._save(f"local-{r}")
        return {}, (self._logits(r) if self.cfg.mode == "mutual" else None)

    def distill(
        self, header: Mapping[str, Any], payload: bytes | None
    ) -> tuple[dict[str, Any], bytes | None]:
        from fedcot.mkt.rounds import CLIENT_DISTILL, Vocab, distil_from, phase_seed, vocab_maps

        cfg, r = self.cfg, int(header["round"])
        if payload is None:
            raise PeerError("train.distill carries no server logits")
        smsg = LogitsMessage.model_validate_json(payload)
        server = Vocab.load(cfg.server.model)
        if smsg.tokenizer_hash != server.tokenizer_hash:
            raise PeerError(
                f"the server's logits use tokenizer {smsg.tokenizer_hash}, but "
                f"{cfg.server.model} has {server.tokenizer_hash} here"
            )
        self._load_local(r)
        task, public, _, _ = self._task_data()
        items = self.party.items(task, public)
        _, own = self.party.public_logits(items, k=cfg.top_k, loss_unit=cfg.loss_unit)
        maps, _ = vocab_maps([(server, self.party)], progress=False)
        entry = distil_from(
            cfg,
            self.party,
            items,
            own,
            [smsg],
            maps,
            {server.tokenizer_hash: server.texts},
            steps=cfg.train.client_steps,
            seed=phase_seed(cfg, r, self.index, CLIENT_DISTILL),
            what="distil from server",
            progress=False,
        )
        self._save(f"round-{r}")
        out: dict[str, Any] = {"log": [entry]}
        if header.get("evaluate"):
            out["eval"] = self._evaluate(r)
        return out, None

    def evaluate(self, header: Mapping[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        r = int(header["round"])
        restored = self.restore(r)
        if restored != r:
            raise FlowerRunError(f"{self.name} holds no checkpoint of round {r}")
        return {"eval": self._evaluate(r)}, None


def _client_handler(kind: str) -> Any:
    """A ClientApp function for one message type (errors go back as Flower errors)."""

    def handle(msg: Any, context: Any) -> Any:
        from flwr.app import Message

        header, payload = _unpack(msg)
        worker = ClientWorker(str(header.get("config", "")), context.node_config)
        if kind == HELLO:
            out = worker.hello(header)
        elif kind == LOCAL:
            out = worker.local(header)
        elif kind == FEDAVG:
            out = worker.fedavg(header, payload)
        elif kind == DISTILL:
            out = worker.distill(header, payload)
        else:
            out = worker.evaluate(header)
        return Message(_pack(*out), reply_to=msg)

    return handle


def _make_client_app() -> Any:
    try:
        from flwr.clientapp import ClientApp
    except ImportError:  # the app objects need flwr; the rest of the module does not
        return None
    app = ClientApp()
    app.query("hello")(_client_handler(HELLO))
    app.train("local")(_client_handler(LOCAL))
    app.train("fedavg")(_client_handler(FEDAVG))
    app.train("distill")(_client_handler(DISTILL))
    app.evaluate()(_client_handler(EVALUATE))
    return app


# --------------------------------------------------------------------------------------
# The server side
# --------------------------------------------------------------------------------------


@dataclass
class _Federation:
    """Which SuperNode is which client, message exchange with timeouts, drop-outs, bytes."""

    grid: Any
    config_text: str
    expected: dict[str, str]
    """Client party name → the tokenizer hash its model must have."""
    reply_timeout: float
    hello_timeout: float
    con: Console
    nodes: dict[str, int] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    """Every party's latest node, also after it dropped out (a new node means a restart)."""
    ignored: set[int] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)
    bytes_out: int = 0
    bytes_in: int = 0

    def _send(
        self,
        kind: str,
        round_no: int,
        work: dict[int, tuple[dict[str, Any], bytes | None]],
        timeout: float,
    ) -> dict[int, tuple[dict[str, Any], bytes | None] | str]:
        """Send one message per node; returns per node the reply or why there is none."""
        from flwr.app import Message

        msgs = []
        for node, (header, payload) in work.items():
            header = {**header, "config": self.config_text, "round": round_no}
            self.bytes_out += _size(header, payload)
            msgs.append(
                Message(
                    _pack(header, payload),
                    dst_node_id=node,
                    message_type=kind,
                    group_id=str(round_no),
                    ttl=max(timeout, 1.0),
                )
            )
        out: dict[int, Any] = dict.fromkeys(work, f"no reply within {timeout:g} s")
        for reply in self.grid.send_and_receive(msgs, timeout=timeout):
            node = reply.metadata.src_node_id
            if node not in work:
                continue
            try:
                header, payload = _unpack(reply)
            except PeerError as exc:
                out[node] = str(exc)
                continue
            self.bytes_in += _size(header, payload)
            out[node] = (header, payload)
        return out

    def drop(self, round_no: int, party: str, phase: str, reason: str) -> None:
        self.nodes.pop(party, None)
        self.events.append({"round": round_no, "party": party, "phase": phase, "reason": reason})
        self.con.log(f"[yellow]round {round_no}: {party} dropped at {phase}: {reason}")

    def discover(self, round_no: int, *, need: int, wait: float) -> None:
        """Greet SuperNodes not yet known until ``need`` clients are mapped (or ``wait``
        seconds pass); a node that does not answer a greeting is ignored from then on."""
        deadline = time.monotonic() + wait
        while True:
            known = set(self.nodes.values()) | self.ignored
            new = [n for n in self.grid.get_node_ids() if n not in known]
            if new:
                replies = self._send(
                    HELLO, round_no, {n: ({}, None) for n in new}, self.hello_timeout
                )
                for node, rep in replies.items():
                    if isinstance(rep, str):
                        self.ignored.add(node)
                        self.con.log(f"[yellow]node {node} ignored: {rep}")
                        continue
                    self._greeted(round_no, node, rep[0])
            if len(self.nodes) >= need:
                return
            if time.monotonic() >= deadline:
                raise FlowerRunError(
                    f"only {len(self.nodes)} of the {need} clients needed answered within "
                    f"{wait:g} s ({sorted(self.nodes) or 'none'})",
                    hint="start one flower-supernode per client with --node-config "
                    "'party=\"client-N\"', or lower min-clients",
                )
            time.sleep(1.0)

    def _greeted(self, round_no: int, node: int, header: dict[str, Any]) -> None:
        party = str(header.get("party"))
        want = self.expected.get(party)
        if want is None:
            self.ignored.add(node)
            self.con.log(f"[yellow]node {node} claims unknown party {party!r}; ignored")
            return
        if header.get("tokenizer_hash") != want:
            self.ignored.add(node)
            self.con.log(
                f"[yellow]node {node} ({party}) has tokenizer {header.get('tokenizer_hash')}, "
                f"expected {want}; ignored"
            )
            return
        old = self.seen.get(party)
        if old is not None and old != node:
            self.ignored.add(old)
            self.events.append({"round": round_no, "party": party, "phase": "rejoin"})
        self.nodes[party] = self.seen[party] = node
        self.con.log(f"{party} is node {node} (checkpoints of rounds {header.get('rounds_saved')})")

    def exchange(
        self,
        kind: str,
        round_no: int,
        work: dict[str, tuple[dict[str, Any], bytes | None]],
        phase: str,
    ) -> dict[str, tuple[dict[str, Any], bytes | None]]:
        """Send every party in ``work`` its message; drops those that fail (recorded)."""
        by_node = {self.nodes[p]: w for p, w in work.items() if p in self.nodes}
        party_of = {self.nodes[p]: p for p in work if p in self.nodes}
        replies = self._send(kind, round_no, by_node, self.reply_timeout) if by_node else {}
        ok: dict[str, tuple[dict[str, Any], bytes | None]] = {}
        for node, rep in replies.items():
            if isinstance(rep, str):
                self.drop(round_no, party_of[node], phase, rep)
            else:
                ok[party_of[node]] = rep
        return ok


def run_flower_server(grid: Any, opts: FlowerRunOptions, console: Console | None = None) -> Any:
    """The ServerApp's body: FedMKT rounds with the clients behind ``grid``."""
    from fedcot.data.tasks import get_task
    from fedcot.mkt.rounds import (
        SERVER_DISTILL,
        RunFolder,
        Vocab,
        average_adapters,
        distil_from,
        load_party,
        manifest_base,
        party_info,
        phase_seed,
        split_data,
        vocab_maps,
    )

    cfg = opts.config
    con = console or Console(stderr=True)
    config_text = dump_config(cfg)
    run = RunFolder(cfg, resume=opts.resume)
    task = get_task(cfg.task, answer_style="text")
    t0 = time.perf_counter()
    public, _, test = split_data(cfg, task)
    names = cfg.party_names()
    server = load_party(cfg, names[0])
    vocabs = {m: Vocab.load(m) for m in dict.fromkeys(c.model for c in cfg.clients)}
    expected = {n: vocabs[c.model].tokenizer_hash for n, c in zip(names[1:], cfg.clients)}
    pairs = [(v, server) for v in vocabs.values()] if cfg.mode == "mutual" else []
    maps, map_info = vocab_maps(pairs, progress=False)
    texts = {v.tokenizer_hash: v.texts for v in vocabs.values()}
    s_items = server.items(task, public)
    run.timings.setdefault("setup_s", round(time.perf_counter() - t0, 2))
    con.log(
        f"FedMKT over Flower · {cfg.task} · {cfg.scenario} · mode {cfg.mode} · "
        f"{len(public)} public, {len(test)} test · run folder {run.out}"
    )

    fed = _Federation(grid, config_text, expected, opts.reply_timeout, opts.hello_timeout, con)
    need = opts.min_clients or len(cfg.clients)
    fed.discover(run.done + 1 if run.done else 0, need=need, wait=opts.wait_clients)
    clients_seen: dict[str, int] = dict(fed.nodes)

    def order(parties: Mapping[str, Any]) -> list[str]:
        return [n for n in names[1:] if n in parties]

    if run.done:
        server.load(run.checkpoint_dir(run.done) / server.name)
        con.log(f"resuming after round {run.done} of {cfg.rounds}")
    elif "0" not in run.metrics["rounds"]:
        run.record_eval(0, server.name, server.evaluate(task, test, progress=False))
        evals = fed.exchange(EVALUATE, 0, {p: ({}, None) for p in order(fed.nodes)}, "evaluate")
        for p in order(evals):
            run.record_eval(0, p, evals[p][0]["eval"])
        run.metrics.setdefault("dropouts", {})["0"] = [e for e in fed.events if e["round"] == 0]
        run.save_metrics()
        _log_accuracy(con, 0, run.metrics["rounds"]["0"])

    for r in range(run.done + 1, cfg.rounds + 1):
        tr0 = time.perf_counter()
        out0, in0 = fed.bytes_out, fed.bytes_in
        fed.discover(r, need=0, wait=0)
        clients_seen.update(fed.nodes)
        want_eval = cfg.eval_each_round or r == cfg.rounds
        log: list[dict[str, Any]] = []
        traffic: dict[str, Any] = {}
        header = {"restore": r - 1, "evaluate": want_eval}
        local = fed.exchange(LOCAL, r, {p: (header, None) for p in order(fed.nodes)}, "local")
        for p in order(local):
            log += local[p][0].get("log", [])
            if local[p][0].get("restored") != r - 1:
                fed.events.append(
                    {
                        "round": r,
                        "party": p,
                        "phase": "restore",
                        "reason": f"restored round {local[p][0].get('restored')}, not {r - 1}",
                    }
                )
        finals: dict[str, dict[str, Any]] = {}
        received: list[LogitsMessage] = []
        if cfg.mode == "standalone":
            finals = {p: local[p][0] for p in order(local)}
        else:
            logits_payloads = {p: local[p][1] for p in order(local)}
            if cfg.fedavg:
                adapters = {}
                for p in order(local):
                    try:
                        adapters[p] = AdapterMessage.model_validate_json(local[p][1] or b"")
                    except ValidationError as exc:
                        fed.drop(r, p, "fedavg", f"bad adapter: {exc.error_count()} errors")
                if adapters:
                    avg = average_adapters([adapters[p] for p in order(adapters)])
                    avg_msg = AdapterMessage(
                        round=r,
                        sender=server.name,
                        model=cfg.clients[0].model,
                        n_examples=sum(a.n_examples for a in adapters.values()),
                        tensors={k: TensorBlob.from_array(v) for k, v in avg.items()},
                    ).model_dump_json()
                    traffic["fedavg_bytes"] = sum(len(local[p][1] or b"") for p in adapters)
                    res = fed.exchange(
                        FEDAVG, r, {p: ({}, avg_msg.encode()) for p in order(adapters)}, "fedavg"
                    )
                    logits_payloads = {p: res[p][1] for p in order(res)}
            if cfg.mode == "mutual":
                for p in order(logits_payloads):
                    raw = logits_payloads[p]
                    try:
                        msg = LogitsMessage.model_validate_json(raw or b"")
                        _check_logits(msg, p, r, expected[p], len(s_items))
                    except (ValidationError, PeerError) as exc:
                        reason = (
                            f"{exc.error_count()} validation errors"
                            if isinstance(exc, ValidationError)
                            else str(exc)
                        )
                        fed.drop(r, p, "logits", f"bad logits: {reason}")
                        continue
                    traffic[p] = {"bytes": len(raw or b""), "dense_bytes": msg.dense_nbytes()}
                    received.append(msg)
        # The server learns from what arrived; with no teacher (one-way, standalone, or
        # every client dropped) it trains on the public labels alone.
        own = (
            server.public_logits(s_items, k=cfg.top_k, loss_unit=cfg.loss_unit)[1]
            if received
            else None
        )
        log.append(
            distil_from(
                cfg,
                server,
                s_items,
                own,
                received,
                maps,
                texts,
                steps=cfg.train.server_steps,
                seed=phase_seed(cfg, r, 0, SERVER_DISTILL),
                what="distil from clients",
                progress=False,
            )
        )
        if cfg.mode != "standalone":
            s_rows, s_loss = server.public_logits(s_items, k=cfg.top_k, loss_unit=cfg.loss_unit)
            smsg = server.message(r, s_items, s_rows, s_loss)
            raw = smsg.model_dump_json().encode()
            targets = order(fed.nodes)
            if targets:
                traffic[server.name] = {
                    "bytes": len(raw) * len(targets),
                    "dense_bytes": smsg.dense_nbytes() * len(targets),
                    "per_client_bytes": len(raw),
                }
            done = fed.exchange(
                DISTILL, r, {p: ({"evaluate": want_eval}, raw) for p in targets}, "distill"
            )
            finals = {p: done[p][0] for p in order(done)}
            for p in order(finals):
                log += finals[p].get("log", [])
        if want_eval:
            run.record_eval(r, server.name, server.evaluate(task, test, progress=False))
            for p in order(finals):
                if "eval" in finals[p]:
                    run.record_eval(r, p, finals[p]["eval"])
            _log_accuracy(con, r, run.metrics["rounds"][str(r)])
        traffic["flower"] = {
            "to_clients_bytes": fed.bytes_out - out0,
            "from_clients_bytes": fed.bytes_in - in0,
        }
        run.finish_round(
            r,
            [server],
            log,
            traffic,
            time.perf_counter() - tr0,
            dropouts=[e for e in fed.events if e["round"] == r],
            clients={"finished": order(finals)},
        )
        con.log(f"round {r}/{cfg.rounds} done in {run.timings[f'round_{r}_s']:.0f} s")

    parties = {server.name: party_info(server, "server")}
    for n, c in zip(names[1:], cfg.clients):
        parties[n] = {
            "model": c.model,
            "tokenizer_hash": expected[n],
            "role": "client",
            "flower_node": clients_seen.get(n),
        }
    manifest = manifest_base(
        cfg,
        parties,
        public,
        [cfg.private_size] * len(cfg.clients),
        len(test),
        map_info,
        "flower",
    )
    return run.finish(manifest)


def _check_logits(msg: LogitsMessage, party: str, round_no: int, tok_hash: str, n: int) -> None:
    if msg.sender != party or msg.round != round_no:
        raise PeerError(f"sent as {msg.sender!r} for round {msg.round}")
    if msg.tokenizer_hash != tok_hash:
        raise PeerError(f"tokenizer {msg.tokenizer_hash}, expected {tok_hash}")
    if len(msg.samples) != n:
        raise PeerError(f"{len(msg.samples)} samples, expected {n}")


def _log_accuracy(con: Console, round_no: int, row: Mapping[str, Any]) -> None:
    con.log(
        f"round {round_no}: "
        + ", ".join(f"{n} {100 * float(v['accuracy']):.1f} %" for n, v in row.items())
    )


def _make_server_app() -> Any:
    try:
        from flwr.serverapp import ServerApp
    except ImportError:
        return None
    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        opts = FlowerRunOptions.from_run_config(dict(context.run_config))
        run_flower_server(grid, opts, Console(stderr=True, width=120))

    return app


server_app = _make_server_app()
client_app = _make_client_app()


# --------------------------------------------------------------------------------------
# The Flower App folder
# --------------------------------------------------------------------------------------


def write_flower_app(folder: Path, cfg: MKTConfig, **run_config: Any) -> Path:
    """Write a Flower App (``pyproject.toml``) that runs ``cfg`` with ``flwr run``.

    The FedMKT config travels inside the app's run config, so the SuperLink's machine needs
    no copy of it; ``run_config`` sets the other keys of :data:`RUN_CONFIG_DEFAULTS`
    (``output_dir`` → ``output-dir`` …). The output folder is made absolute, because the
    ServerApp runs wherever the SuperLink was started.
    """
    import tomli_w

    from fedcot import __version__

    cfg = absolute_paths(cfg)
    config = dict(RUN_CONFIG_DEFAULTS)
    for key, value in run_config.items():
        k = key.replace("_", "-")
        if k not in RUN_CONFIG_DEFAULTS or k == "mkt-config":
            raise ConfigError(f"unknown Flower run config key {key!r}")
        if value is not None:
            config[k] = type(RUN_CONFIG_DEFAULTS[k])(value)
    config["mkt-config"] = dump_config(cfg)
    config["output-dir"] = str(cfg.output_dir)
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "fedcot-mkt",
            "version": __version__,
            "description": f"FedMKT ({cfg.task}, {cfg.mode}) with fedcot over Flower",
            "license": "Apache-2.0",
            "dependencies": ["flwr>=1.41,<1.42", f"fedcot=={__version__}"],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedcot",
                    "components": {
                        "serverapp": "fedcot.federation.flower:server_app",
                        "clientapp": "fedcot.federation.flower:client_app",
                    },
                    "config": config,
                }
            }
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text(tomli_w.dumps(doc, multiline_strings=True), encoding="utf-8")
    return path


def absolute_paths(cfg: MKTConfig) -> MKTConfig:
    """``cfg`` with its output folder, and the data and model paths that exist here, made
    absolute (the ServerApp runs in the SuperLink's folder, not in the caller's)."""

    def fix(value: str) -> str:
        p = Path(value).expanduser()
        return str(p.resolve()) if not p.is_absolute() and p.exists() else value

    return cfg.model_copy(
        update={
            "output_dir": Path(cfg.output_dir).expanduser().resolve(),
            "data": fix(cfg.data),
            "server": cfg.server.model_copy(update={"model": fix(cfg.server.model)}),
            "clients": [c.model_copy(update={"model": fix(c.model)}) for c in cfg.clients],
        }
    )
