"""Logit distillation with sparse targets: loss = λ·L_FT + (1 − λ)·L_KD.

``L_FT`` is the token-mean cross-entropy on the target tokens (the answer and EOS).
``L_KD`` is the mean, over the target rows that have a teacher distribution, of the
cross-entropy ``−Σ_k p_teacher(k) · log p_student(k)`` on the teacher's top-K ids; the
teacher's K probabilities are renormalised to sum to one, the student's are its full
softmax. Samples whose teacher was not selected contribute only to ``L_FT``.

A short, readable loop rather than a ``transformers.Trainer``: FedMKT trains a few dozen
steps per phase and restarts from round checkpoints, so an epoch/step state machine would
add nothing. Batches are padded on the left so the target tokens sit at the end of every row
and only those positions go through the (vocabulary-sized) output layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcot.errors import ConfigError
from fedcot.train.config import IGNORE_INDEX
from fedcot.train.steps import accepts_logits_to_keep

if TYPE_CHECKING:
    from fedcot.train.sparse import SparseRows

__all__ = ["KDItem", "TrainStats", "batch_forward", "kd_loss_terms", "train_steps"]


@dataclass
class KDItem:
    """One training sequence: prompt + target, and optional sparse targets for the target."""

    input_ids: list[int]
    labels: list[int]
    """``-100`` on the prompt, the token ids on the target (answer + EOS)."""
    targets: SparseRows | None = None
    """One row per target token from ``start`` on (EOS need not have one); None: FT only."""

    @property
    def start(self) -> int:
        """Index of the first target token."""
        for i, lab in enumerate(self.labels):
            if lab != IGNORE_INDEX:
                return i
        return len(self.labels)


@dataclass
class TrainStats:
    """What a phase of training did."""

    steps: int = 0
    loss: float = float("nan")
    ft_loss: float = float("nan")
    kd_loss: float = float("nan")
    kd_rows: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        if s:
            ids[b, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[b, width - len(s) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def batch_forward(model: Any, seqs: Sequence[Sequence[int]], keep: int, pad_id: int) -> Any:
    """Logits [B, keep, V] of the last ``keep`` positions of each (left-padded) sequence."""
    ids, mask, positions = _left_pad(seqs, pad_id)
    keep = max(1, min(keep, ids.shape[1]))
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    if accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    out = model(**kwargs)
    return out.logits[:, -keep:, :]


def kd_loss_terms(logits: Any, items: Sequence[KDItem]) -> tuple[Any, Any, int]:
    """(L_FT, L_KD, number of KD rows) for ``logits`` = the last positions of each item.

    ``logits[b, j]`` belongs to position ``len(seq_b) - keep + j`` of item b, with ``keep =
    logits.shape[1]``; the logits at position i predict token i + 1.
    """
    import torch

    keep = logits.shape[1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    ft_terms: list[Any] = []
    kd_terms: list[Any] = []
    for b, item in enumerate(items):
        n = len(item.input_ids)
        offset = n - keep  # absolute position of logits[b, 0]
        start = item.start
        if start < 1 or start - 1 < offset:
            raise ValueError("the kept logits do not cover the target tokens")
        labels = torch.tensor(item.labels[start:], dtype=torch.long)
        rows = logp[b, start - 1 - offset : n - 1 - offset]  # predict tokens start..n-1
        ft_terms.append(-rows.gather(1, labels[:, None]).squeeze(1))
        t = item.targets
        if t is not None and len(t):
            m = min(len(t), rows.shape[0])
            ids = torch.as_tensor(np.maximum(t.ids[:m], 0), dtype=torch.long)
            p = torch.as_tensor(t.probs()[:m], dtype=torch.float32)
            kd_terms.append(-(p * rows[:m].gather(1, ids)).sum(-1))
    ft = torch.cat(ft_terms).mean()
    if kd_terms:
        kd_rows = torch.cat(kd_terms)
        return ft, kd_rows.mean(), int(kd_rows.numel())
    return ft, torch.zeros((), dtype=ft.dtype), 0


def train_steps(
    model: Any,
    items: Sequence[KDItem],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    lam: float = 1.0,
    seed: int = 0,
    pad_id: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainStats:
    """Train ``model``'s trainable parameters for ``steps`` AdamW steps.

    Items are visited in a seeded shuffled order, epoch after epoch. Dropout is seeded too, so
    a phase repeated with the same seed and weights gives the same result (what resuming a
    round relies on). ``lam = 1`` is plain fine-tuning.
    """
    import time

    import torch

    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"lambda = {lam} is out of range", hint="lambda must be in [0, 1]")
    if steps < 0 or batch_size < 1:
        raise ConfigError("steps must be >= 0 and batch_size >= 1")
    stats = TrainStats()
    if steps == 0:
        return stats
    if not items:
        raise ConfigError("nothing to train on", hint="the party has no training examples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters", hint="apply LoRA first")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    order: list[int] = []
    totals = {"loss": 0.0, "ft": 0.0, "kd": 0.0}
    kd_steps = 0
    model.train()
    try:
        for step in range(steps):
            batch: list[KDItem] = []
            while len(batch) < batch_size:
                if not order:
                    order = [int(i) for i in rng.permutation(len(items))]
                batch.append(items[order.pop()])
                if len(batch) == len(items):
                    break
            keep = max(len(it.input_ids) - it.start + 1 for it in batch)
            logits = batch_forward(model, [it.input_ids for it in batch], keep, pad_id)
            ft, kd, n_kd = kd_loss_terms(logits, batch)
            loss = lam * ft + (1.0 - lam) * kd  # kd is 0 without KD rows
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            loss_v, ft_v, kd_v = float(loss.detach()), float(ft.detach()), float(kd.detach())
            totals["loss"] += loss_v
            totals["ft"] += ft_v
            if n_kd:
                totals["kd"] += kd_v
                kd_steps += 1
            stats.kd_rows += n_kd
            stats.history.append({"step": step + 1, "loss": loss_v, "ft": ft_v, "kd": kd_v})
            if on_step is not None:
                on_step(step + 1, loss_v)
    finally:
        model.eval()
    stats.steps = steps
    stats.loss = totals["loss"] / steps
    stats.ft_loss = totals["ft"] / steps
    stats.kd_loss = totals["kd"] / kd_steps if kd_steps else float("nan")
    stats.seconds = round(time.perf_counter() - t0, 2)
    return stats
