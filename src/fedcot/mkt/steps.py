"""The training steps of a FedMKT round, and the clients' side of each phase.

:func:`train_party` (seeded AdamW steps of λ·L_FT + (1 − λ)·L_KD) and :func:`distill_from`
(align every teacher's rows, select per sample, distill) are what every party runs; FedAvg is
:func:`adapter_message` on each client and :func:`average_adapters` on the server.

A client's side of the round is written once, as phases over a list of
:class:`ClientSteps`: :func:`local_phase`, :func:`fedavg_phase`, :func:`distill_phase` and
:func:`evaluate_phase`. The in-process engine runs each phase over all its clients (a step
at a time across them, so ``on_phase`` sees the protocol's order); the Flower ClientApp runs
it over its one client after restoring that client's checkpoint. Every step is seeded by
(seed, round, party, phase) (:func:`phase_seed`), so both end with the same adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from fedcot.data.tasks import Example, Task
from fedcot.evaluation import EvalResult
from fedcot.mkt.config import MKTConfig
from fedcot.mkt.party import Party, PublicItem, seed_of
from fedcot.mkt.payloads import AdapterMessage, LogitsMessage, TensorBlob
from fedcot.mkt.selection import select_targets
from fedcot.progress import progress_bar
from fedcot.train.logit_kd import KDItem, train_steps
from fedcot.train.sparse import SparseRows

__all__ = [
    "CLIENT_DISTILL",
    "LOCAL",
    "SERVER_DISTILL",
    "ClientReply",
    "ClientSteps",
    "Maps",
    "PhaseCallback",
    "adapter_message",
    "average_adapters",
    "distill_from",
    "distill_phase",
    "evaluate_phase",
    "fedavg_phase",
    "ignore_phase",
    "local_phase",
    "phase_seed",
    "train_party",
]

LOCAL, SERVER_DISTILL, CLIENT_DISTILL = 1, 2, 3
"""Phase numbers in the seeds: every phase is seeded by (seed, round, party index, phase)."""

PhaseCallback = Callable[[int, str, str], None]
"""``on_phase(round, party, phase)``, called before each phase: to follow a run's progress,
log it, or stop it at a given phase by raising (the tests inject faults this way)."""

Maps = Mapping[tuple[str, str], np.ndarray]
"""MinED vocabulary maps keyed by (sender tokenizer hash, receiver tokenizer hash)."""


def ignore_phase(round_no: int, party: str, phase: str) -> None:
    """The ``on_phase`` of a run nobody watches."""


def phase_seed(cfg: MKTConfig, round_no: int, index: int, phase: int) -> int:
    """The seed of one party's phase in one round (index 0 = server, i = client i)."""
    return seed_of(cfg.seed, round_no, index, phase)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def train_party(
    cfg: MKTConfig,
    party: Party,
    items: Sequence[Any],
    *,
    steps: int,
    lam: float,
    seed: int,
    what: str,
    progress: bool,
) -> dict[str, Any]:
    """``steps`` seeded AdamW steps of λ·L_FT + (1 − λ)·L_KD; returns the log entry."""
    kd_items = [it if isinstance(it, KDItem) else KDItem(it.input_ids, it.labels) for it in items]
    with progress_bar(steps, f"{party.name}: {what}", enabled=progress) as advance:
        stats = train_steps(
            party.model,
            kd_items,
            steps=steps,
            batch_size=cfg.train.batch_size,
            learning_rate=cfg.train.learning_rate,
            lam=lam,
            seed=seed,
            pad_id=int(party.tokenizer.pad_token_id),
            on_step=lambda s, loss: advance(1),
        )
    return {
        "party": party.name,
        "phase": what,
        "steps": stats.steps,
        "loss": stats.loss,
        "ft": stats.ft_loss,
        "kd": stats.kd_loss,
        "kd_rows": stats.kd_rows,
        "seconds": stats.seconds,
    }


def distill_from(
    cfg: MKTConfig,
    party: Party,
    items: Sequence[PublicItem],
    own_losses: np.ndarray | None,
    messages: Sequence[LogitsMessage],
    maps: Maps,
    texts: Mapping[str, Sequence[str]],
    *,
    steps: int,
    seed: int,
    what: str,
    progress: bool,
) -> dict[str, Any]:
    """Align every teacher's rows to ``party``, select per sample (``cfg.selection``) and
    distill. With no teacher (none sent, or all dropped out) it trains on the labels alone,
    and ``own_losses`` is not needed."""
    if not messages or own_losses is None:
        entry = train_party(
            cfg,
            party,
            items,
            steps=steps,
            lam=1.0,
            seed=seed,
            what="public labels",
            progress=progress,
        )
        return {**entry, "selected": 0, "transferred": 0, "teachers": []}
    teacher_rows = [
        party.targets_from(
            m, items, maps[(m.tokenizer_hash, party.tokenizer_hash)], texts[m.tokenizer_hash]
        )
        for m in messages
    ]
    teacher_loss = np.stack([m.losses() for m in messages])
    picks = select_targets(cfg.selection, own_losses, teacher_loss, teacher_rows, cfg.temperature)
    entry = train_party(
        cfg,
        party,
        [KDItem(it.input_ids, it.labels, p) for it, p in zip(items, picks)],
        steps=steps,
        lam=cfg.lam,
        seed=seed,
        what=what,
        progress=progress,
    )
    entry["selected"] = sum(p is not None for p in picks)
    entry["transferred"] = _transferred(picks)
    entry["teachers"] = [m.sender for m in messages]
    return entry


def _transferred(picks: Sequence[SparseRows | None]) -> int:
    """Rows that carry a teacher's distribution (not a one-hot fallback)."""
    return sum(int(np.asarray(p.transferred).sum()) for p in picks if p is not None)


# --------------------------------------------------------------------------------------
# FedAvg
# --------------------------------------------------------------------------------------


def adapter_message(party: Party, round_no: int, n_examples: int) -> AdapterMessage:
    """A party's LoRA tensors as a typed message."""
    return AdapterMessage(
        round=round_no,
        sender=party.name,
        model=party.model_name,
        n_examples=n_examples,
        tensors={k: TensorBlob.from_array(v) for k, v in party.adapter_state().items()},
    )


def average_adapters(msgs: Sequence[AdapterMessage]) -> dict[str, np.ndarray]:
    """FedAvg: the adapters weighted by each sender's number of private examples."""
    total = sum(m.n_examples for m in msgs)
    return {
        k: sum(m.tensors[k].array() * (m.n_examples / total) for m in msgs) for k in msgs[0].tensors
    }


# --------------------------------------------------------------------------------------
# A client's side of the round
# --------------------------------------------------------------------------------------


@dataclass
class ClientReply:
    """What a client answers to one phase."""

    log: list[dict[str, Any]] = field(default_factory=list)
    """Its training log entries of the phase."""
    payload: bytes | None = None
    """A serialised :class:`AdapterMessage` (local phase, with FedAvg) or
    :class:`LogitsMessage` (``mutual``: after local training, or after FedAvg)."""
    eval: Any = None
    """Its test evaluation when one was asked for: an :class:`EvalResult` (in process) or
    its summary dict (over Flower)."""


class ClientSteps:
    """One client's steps: a party, its index (1…K), its private part and the shared data."""

    def __init__(
        self,
        cfg: MKTConfig,
        party: Party,
        index: int,
        task: Task,
        public: Sequence[Example],
        private: Sequence[Example],
        test: Sequence[Example],
        *,
        progress: bool = False,
    ) -> None:
        self.cfg, self.party, self.index, self.task = cfg, party, index, task
        self.public, self.private, self.test = public, private, test
        self.progress = progress
        self._own: tuple[int, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return self.party.name

    @cached_property
    def public_items(self) -> list[PublicItem]:
        return self.party.items(self.task, self.public)

    @cached_property
    def private_items(self) -> list[PublicItem]:
        return self.party.items(self.task, self.private)

    def _train(
        self, items: Sequence[PublicItem], steps: int, phase: int, round_no: int, what: str
    ) -> dict[str, Any]:
        """Plain fine-tuning (λ = 1), seeded by this client's phase."""
        seed = phase_seed(self.cfg, round_no, self.index, phase)
        return train_party(
            self.cfg,
            self.party,
            items,
            steps=steps,
            lam=1.0,
            seed=seed,
            what=what,
            progress=self.progress,
        )

    def train_private(self, round_no: int) -> dict[str, Any]:
        """Fine-tune on the private part (``local_steps``)."""
        steps = self.cfg.train.local_steps
        return self._train(self.private_items, steps, LOCAL, round_no, "private data")

    def train_public(self, round_no: int) -> dict[str, Any]:
        """``standalone``: fine-tune on the public labels (``client_steps``, λ = 1)."""
        steps = self.cfg.train.client_steps
        return self._train(self.public_items, steps, CLIENT_DISTILL, round_no, "public labels")

    def logits(self, round_no: int) -> bytes:
        """The serialised :class:`LogitsMessage` of this client's public logits (its own
        losses are kept for :meth:`distill` in the same round)."""
        items = self.public_items
        rows, losses = self.party.public_logits(
            items, k=self.cfg.top_k, loss_unit=self.cfg.loss_unit
        )
        self._own = (round_no, losses)
        return self.party.message(round_no, items, rows, losses).model_dump_json().encode()

    def own_losses(self, round_no: int) -> np.ndarray:
        """This client's per-sample losses on the public set (as its logits of this round
        had them; computed now when it sent none)."""
        if self._own is not None and self._own[0] == round_no:
            return self._own[1]
        cfg = self.cfg
        return self.party.public_logits(self.public_items, k=cfg.top_k, loss_unit=cfg.loss_unit)[1]

    def adapter(self, round_no: int) -> bytes:
        """The serialised :class:`AdapterMessage` of this client's LoRA (FedAvg)."""
        msg = adapter_message(self.party, round_no, len(self.private))
        return msg.model_dump_json().encode()

    def take_average(self, average: AdapterMessage) -> None:
        """Load the FedAvg average into this client's LoRA."""
        self.party.set_adapter_state({k: v.array() for k, v in average.tensors.items()})

    def distill(
        self, round_no: int, server: LogitsMessage, maps: Maps, texts: Mapping[str, Sequence[str]]
    ) -> dict[str, Any]:
        """Distill from the server's logits (``client_steps``)."""
        return distill_from(
            self.cfg,
            self.party,
            self.public_items,
            self.own_losses(round_no),
            [server],
            maps,
            texts,
            steps=self.cfg.train.client_steps,
            seed=phase_seed(self.cfg, round_no, self.index, CLIENT_DISTILL),
            what="distill from server",
            progress=self.progress,
        )

    def evaluate(self) -> EvalResult:
        return self.party.evaluate(self.task, self.test, progress=self.progress)


def local_phase(
    cfg: MKTConfig,
    clients: Sequence[ClientSteps],
    round_no: int,
    *,
    evaluate: bool,
    on_phase: PhaseCallback = ignore_phase,
) -> dict[str, ClientReply]:
    """Every client trains on its private part. ``standalone``: then on the public labels,
    which ends its round (evaluated if asked). Otherwise it sends its adapter (FedAvg) or,
    ``mutual``, its logits."""
    replies = {c.name: ClientReply() for c in clients}
    for c in clients:
        on_phase(round_no, c.name, "local")
        replies[c.name].log.append(c.train_private(round_no))
    if cfg.mode == "standalone":
        for c in clients:
            on_phase(round_no, c.name, "distill")
            replies[c.name].log.append(c.train_public(round_no))
        if evaluate:
            for c in clients:
                replies[c.name].eval = c.evaluate()
    elif cfg.fedavg:
        on_phase(round_no, "clients", "fedavg")
        for c in clients:
            replies[c.name].payload = c.adapter(round_no)
    else:
        _send_logits(cfg, clients, round_no, replies, on_phase)
    return replies


def fedavg_phase(
    cfg: MKTConfig,
    clients: Sequence[ClientSteps],
    round_no: int,
    average: AdapterMessage,
    *,
    on_phase: PhaseCallback = ignore_phase,
) -> dict[str, ClientReply]:
    """Every client loads the FedAvg average; ``mutual``: then sends its logits."""
    for c in clients:
        c.take_average(average)
    replies = {c.name: ClientReply() for c in clients}
    _send_logits(cfg, clients, round_no, replies, on_phase)
    return replies


def _send_logits(
    cfg: MKTConfig,
    clients: Sequence[ClientSteps],
    round_no: int,
    replies: dict[str, ClientReply],
    on_phase: PhaseCallback,
) -> None:
    # The clients' logits step (in one-way mode nothing is sent: a client computes its own
    # losses when it distills).
    for c in clients:
        on_phase(round_no, c.name, "logits")
        if cfg.mode == "mutual":
            replies[c.name].payload = c.logits(round_no)


def distill_phase(
    clients: Sequence[ClientSteps],
    round_no: int,
    server: LogitsMessage,
    maps: Maps,
    texts: Mapping[str, Sequence[str]],
    *,
    evaluate: bool,
    on_phase: PhaseCallback = ignore_phase,
) -> dict[str, ClientReply]:
    """Every client distills from the server's logits (evaluated after, if asked)."""
    replies = {}
    for c in clients:
        on_phase(round_no, c.name, "distill")
        replies[c.name] = ClientReply(log=[c.distill(round_no, server, maps, texts)])
        if evaluate:
            replies[c.name].eval = c.evaluate()
    return replies


def evaluate_phase(clients: Sequence[ClientSteps]) -> dict[str, ClientReply]:
    """Every client's test evaluation."""
    return {c.name: ClientReply(eval=c.evaluate()) for c in clients}
