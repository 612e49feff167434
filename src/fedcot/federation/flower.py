"""FedMKT over Flower: the rounds of ``fedcot mkt`` with every party in its own process.

The Flower app is two objects, referenced from a Flower App's ``pyproject.toml`` (written by
``fedcot flower app``):

- ``server_app`` (a :class:`flwr.serverapp.ServerApp`) runs on the SuperLink's machine. It
  holds the server LLM and drives the rounds: it asks each SuperNode which party it is,
  sends the work of each phase as a Flower message, distills from the clients' logits and
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
    server            distills from the clients (DualMinCE), computes its own logits
    server → clients  train.distill  + the server's LogitsMessage
    clients → server  training log and test accuracy

The server runs the round loop of ``fedcot mkt`` (:func:`fedcot.mkt.engine.run_rounds`
over :class:`FlowerTransport`) and each client the phases of :mod:`fedcot.mkt.steps`, with
the same seeds, so a Flower run ends where ``fedcot mkt`` does (tested). A client that
does not answer within ``reply-timeout`` seconds, or answers with an error, is dropped for
the rest of the round and recorded in ``metrics.json`` (``dropouts``); the others go on. A
restarted SuperNode is greeted again at the next round and restores its last checkpoint.
``resume=true`` continues a run from the server's last finished round.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console

from fedcot.config import dump_config
from fedcot.data.tasks import get_task
from fedcot.errors import ConfigError, FedcotError
from fedcot.mkt.config import MKTConfig
from fedcot.mkt.engine import MKTResult, Replies, RunFolder, ServerSide, run_rounds
from fedcot.mkt.party import Party, Vocab, load_party, split_data, vocab_maps
from fedcot.mkt.payloads import AdapterMessage, LogitsMessage
from fedcot.mkt.steps import (
    ClientReply,
    ClientSteps,
    distill_phase,
    evaluate_phase,
    fedavg_phase,
    local_phase,
)
from fedcot.models.registry import fedcot_home
from fedcot.train.lora import ADAPTER_WEIGHTS, load_adapter, save_adapter
from fedcot.version import __version__

__all__ = [
    "RUN_CONFIG_DEFAULTS",
    "ClientWorker",
    "FlowerRunError",
    "FlowerRunOptions",
    "FlowerTransport",
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
    """One client's on-disk state between messages (Flower starts a fresh process per
    message): it restores the checkpoint a phase starts from, runs the phase
    (:mod:`fedcot.mkt.steps`, as the in-process engine does) and saves what it ended with.

    ``node_config`` is the SuperNode's ``--node-config``: ``party`` (required, e.g.
    ``"client-1"``), ``state-dir`` (checkpoints; default ``$FEDCOT_HOME/flower``) and
    ``data`` (this machine's copy of the dataset, overriding the config's path).
    """

    def __init__(self, config_text: str, node_config: Mapping[str, Any]) -> None:
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

    # -- state ---------------------------------------------------------------------------
    @cached_property
    def party(self) -> Party:
        return load_party(self.cfg, self.name)

    @cached_property
    def steps(self) -> ClientSteps:
        """This client's steps on its data (this machine's copy)."""
        task = get_task(self.cfg.task, answer_style="text")
        public, private, test = split_data(self.cfg, task)
        return ClientSteps(
            self.cfg, self.party, self.index, task, public, private[self.index - 1], test
        )

    def rounds_saved(self) -> list[int]:
        """Rounds this client holds a finished checkpoint of."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = re.fullmatch(r"round-(\d+)", p.name)
            if m and (p / ADAPTER_WEIGHTS).is_file():
                found.append(int(m.group(1)))
        return sorted(found)

    def restore(self, round_no: int) -> int:
        """Load the newest checkpoint at or before ``round_no`` (0: the seeded LoRA init)."""
        best = max((r for r in self.rounds_saved() if r <= round_no), default=0)
        if best:
            load_adapter(self.party.model, self.root / f"round-{best}")
        return best

    def _save(self, tag: str) -> None:
        save_adapter(self.party.model, self.root / tag)

    def _load_local(self, round_no: int) -> None:
        folder = self.root / f"local-{round_no}"
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise FlowerRunError(f"{self.name} has no local phase of round {round_no} to go on")
        load_adapter(self.party.model, folder)

    def _reply(
        self, rep: ClientReply, round_no: int, **extra: Any
    ) -> tuple[dict[str, Any], bytes | None]:
        """The phase's reply as a message (header, payload); the test predictions stay here."""
        header: dict[str, Any] = {"log": rep.log, **extra} if rep.log else dict(extra)
        if rep.eval is not None:
            rep.eval.write_predictions(self.root / "eval" / f"round-{round_no}.jsonl")
            header["eval"] = rep.eval.summary()
        return header, rep.payload

    # -- handlers ------------------------------------------------------------------------
    def hello(self, header: Mapping[str, Any]) -> tuple[dict[str, Any], bytes | None]:
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
        r = int(header["round"])
        restored = self.restore(int(header["restore"]))
        evaluate = bool(header.get("evaluate"))
        rep = local_phase(self.cfg, [self.steps], r, evaluate=evaluate)[self.name]
        # In standalone mode the local phase is the client's whole round.
        self._save(f"round-{r}" if self.cfg.mode == "standalone" else f"local-{r}")
        return self._reply(rep, r, restored=restored)

    def fedavg(
        self, header: Mapping[str, Any], payload: bytes | None
    ) -> tuple[dict[str, Any], bytes | None]:
        r = int(header["round"])
        if payload is None:
            raise PeerError("train.fedavg carries no adapter")
        avg = AdapterMessage.model_validate_json(payload)
        self._load_local(r)
        rep = fedavg_phase(self.cfg, [self.steps], r, avg)[self.name]
        self._save(f"local-{r}")
        return self._reply(rep, r)

    def distill(
        self, header: Mapping[str, Any], payload: bytes | None
    ) -> tuple[dict[str, Any], bytes | None]:
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
        maps, _ = vocab_maps([(server, self.party)], progress=False)
        texts = {server.tokenizer_hash: server.texts}
        evaluate = bool(header.get("evaluate"))
        rep = distill_phase([self.steps], r, smsg, maps, texts, evaluate=evaluate)[self.name]
        self._save(f"round-{r}")
        return self._reply(rep, r)

    def evaluate(self, header: Mapping[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        r = int(header["round"])
        restored = self.restore(r)
        if restored != r:
            raise FlowerRunError(f"{self.name} holds no checkpoint of round {r}")
        return self._reply(evaluate_phase([self.steps])[self.name], r)


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


class FlowerTransport:
    """The clients' phases as Flower messages to their SuperNodes (:class:`_Federation`);
    a client that fails a phase is dropped for the rest of the round and recorded."""

    engine = "flower"

    def __init__(self, cfg: MKTConfig, fed: _Federation) -> None:
        self.cfg, self.fed = cfg, fed
        self.clients = cfg.party_names()[1:]
        self.seen: dict[str, int] = dict(fed.nodes)
        """Every client's latest node (the manifest's ``flower_node``)."""
        self._bytes = (fed.bytes_out, fed.bytes_in)

    def start_round(self, round_no: int) -> None:
        self._bytes = (self.fed.bytes_out, self.fed.bytes_in)
        self.fed.discover(round_no, need=0, wait=0)
        self.seen.update(self.fed.nodes)

    def present(self) -> list[str]:
        return [n for n in self.clients if n in self.fed.nodes]

    def _exchange(
        self, kind: str, round_no: int, header: dict[str, Any], payload: bytes | None, phase: str
    ) -> dict[str, tuple[dict[str, Any], bytes | None]]:
        work = {p: (header, payload) for p in self.present()}
        res = self.fed.exchange(kind, round_no, work, phase)
        return {p: res[p] for p in self.clients if p in res}

    def local(self, round_no: int, *, evaluate: bool) -> Replies:
        header = {"restore": round_no - 1, "evaluate": evaluate}
        res = self._exchange(LOCAL, round_no, header, None, "local")
        for p, (h, _) in res.items():
            if h.get("restored") != round_no - 1:
                self.fed.events.append(
                    {
                        "round": round_no,
                        "party": p,
                        "phase": "restore",
                        "reason": f"restored round {h.get('restored')}, not {round_no - 1}",
                    }
                )
        return _replies(res)

    def fedavg(self, round_no: int, average: bytes) -> Replies:
        return _replies(self._exchange(FEDAVG, round_no, {}, average, "fedavg"))

    def distill(self, round_no: int, server_logits: bytes, *, evaluate: bool) -> Replies:
        header = {"evaluate": evaluate}
        return _replies(self._exchange(DISTILL, round_no, header, server_logits, "distill"))

    def evaluate(self, round_no: int) -> Replies:
        return _replies(self._exchange(EVALUATE, round_no, {}, None, "evaluate"))

    def drop(self, round_no: int, party: str, phase: str, reason: str) -> None:
        self.fed.drop(round_no, party, phase, reason)

    def dropouts(self, round_no: int) -> list[dict[str, Any]]:
        return [e for e in self.fed.events if e["round"] == round_no]

    def round_traffic(self) -> dict[str, Any]:
        out0, in0 = self._bytes
        return {
            "flower": {
                "to_clients_bytes": self.fed.bytes_out - out0,
                "from_clients_bytes": self.fed.bytes_in - in0,
            }
        }

    def held_parties(self) -> list[Party]:
        return []  # each client checkpoints itself on its own machine

    def client_info(self) -> dict[str, dict[str, Any]]:
        return {
            n: {
                "model": c.model,
                "tokenizer_hash": self.fed.expected[n],
                "role": "client",
                "flower_node": self.seen.get(n),
            }
            for n, c in zip(self.clients, self.cfg.clients)
        }


def _replies(res: Mapping[str, tuple[dict[str, Any], bytes | None]]) -> Replies:
    return {
        p: ClientReply(log=list(h.get("log", [])), payload=payload, eval=h.get("eval"))
        for p, (h, payload) in res.items()
    }


def run_flower_server(
    grid: Any, opts: FlowerRunOptions, console: Console | None = None
) -> MKTResult:
    """The ServerApp's body: FedMKT rounds (:func:`~fedcot.mkt.engine.run_rounds`) with the
    clients behind ``grid``."""
    cfg = opts.config
    con = console or Console(stderr=True)
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
    side = ServerSide(server, task, public, test, maps, map_info, texts)
    run.timings.setdefault("setup_s", round(time.perf_counter() - t0, 2))
    con.log(
        f"FedMKT over Flower · {cfg.task} · {cfg.scenario} · mode {cfg.mode} · "
        f"{len(public)} public, {len(test)} test · run folder {run.path}"
    )
    fed = _Federation(grid, dump_config(cfg), expected, opts.reply_timeout, opts.hello_timeout, con)
    need = opts.min_clients or len(cfg.clients)
    fed.discover(run.done + 1 if run.done else 0, need=need, wait=opts.wait_clients)
    return run_rounds(cfg, FlowerTransport(cfg, fed), run, side, console=con)


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
