"""What one step of multi-task training computes and counts.

The weighted multi-task loss of a collated batch (:func:`weighted_loss`) and the evaluation
loss read off it (:func:`eval_mean`), the length-grouped order of training batches
(:class:`LengthBucketSampler`) and the running token/second totals of the steps
(:class:`Throughput`). Both the data side (:mod:`fedcot.train.multitask`) and the
transformers subclasses (:mod:`fedcot.train.hf_trainer`) take them from here; torch and
numpy are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedcot.train.config import IGNORE_INDEX

__all__ = [
    "LengthBucketSampler",
    "Throughput",
    "accepts_logits_to_keep",
    "eval_mean",
    "group_length",
    "weighted_loss",
]


# --------------------------------------------------------------------------------------
# Batch order
# --------------------------------------------------------------------------------------


def group_length(group: Sequence[Mapping[str, Any]]) -> int:
    """The padded width a group asks of its batch: its longest sequence."""
    return max((len(s["input_ids"]) for s in group), default=0)


class LengthBucketSampler:
    """Training order in which each optimizer step's groups have similar lengths.

    Per epoch: the groups are sorted by :func:`group_length` (ties broken at random), cut
    into buckets of ``bucket_size`` groups (the examples of one optimizer step: device batch
    size × gradient accumulation), and the order of the buckets is shuffled. A bucket that
    is not full (the remainder) holds the shortest groups and always comes last, so that
    every device batch stays inside one bucket. The permutation depends only on ``seed`` and
    the epoch (:meth:`set_epoch`, called by the Trainer): runs are reproducible and a resumed
    run skips exactly the batches it had trained.
    """

    def __init__(self, lengths: Sequence[int], bucket_size: int, seed: int = 0) -> None:
        if bucket_size < 1:
            raise ValueError("bucket_size must be at least 1")
        self.lengths = [int(n) for n in lengths]
        self.bucket_size = int(bucket_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def buckets(self) -> list[list[int]]:
        """This epoch's buckets of dataset indices, in training order."""
        import numpy as np

        rng = np.random.default_rng([self.seed, self.epoch])
        shuffled = rng.permutation(len(self.lengths)).tolist()
        ordered = sorted(shuffled, key=lambda i: self.lengths[i])  # stable: random ties
        rest = len(ordered) % self.bucket_size
        head, body = ordered[:rest], ordered[rest:]
        full = [body[i : i + self.bucket_size] for i in range(0, len(body), self.bucket_size)]
        order = rng.permutation(len(full)).tolist()
        return [full[i] for i in order] + ([head] if head else [])

    def __iter__(self) -> Any:
        return iter([i for bucket in self.buckets() for i in bucket])


# --------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward (of the base model, under a PeftModel) takes
    ``logits_to_keep``, so that only the last positions go through the output layer."""
    import inspect

    inner = model
    get_base = getattr(inner, "get_base_model", None)  # PeftModel
    if callable(get_base):
        inner = get_base()
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def weighted_loss(
    model: Any, inputs: Mapping[str, Any], weights: Any, use_logits_to_keep: bool
) -> tuple[Any, dict[int, Any], Any]:
    """(loss, {kind index: mean sequence CE}, outputs) of one collated batch."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    kind_ids = inputs["kind_ids"]
    model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "kind_ids")}
    width = labels.shape[1]
    counted = labels.ne(IGNORE_INDEX)
    rows = counted.any(dim=1)
    # Only positions that predict a target token need logits: from the earliest target
    # token minus one (a large saving with big vocabularies and long prompts).
    first = int(counted[rows].float().argmax(dim=1).min()) if bool(rows.any()) else 1
    start = max(first - 1, 0)
    if use_logits_to_keep and start > 0:
        outputs = model(**model_inputs, logits_to_keep=width - start)
        logits = outputs.logits
    else:
        outputs = model(**model_inputs)
        logits = outputs.logits[:, start:]
    # logits[:, j] is position start + j and predicts token start + j + 1.
    logits = logits[:, :-1].float()
    targets = labels[:, start + 1 :]
    token_ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    n_tokens = targets.ne(IGNORE_INDEX).sum(dim=1)
    seq_ce = token_ce.sum(dim=1) / n_tokens.clamp(min=1)
    has_target = n_tokens > 0
    loss = logits.new_zeros(())
    per_kind: dict[int, Any] = {}
    for k in torch.unique(kind_ids[has_target]).tolist():
        sel = (kind_ids == k) & has_target
        mean_k = seq_ce[sel].mean()
        per_kind[int(k)] = mean_k
        loss = loss + weights[int(k)] * mean_k
    return loss, per_kind, outputs


def eval_mean(loss: Any, per_kind: Mapping[int, Any], weights: Any) -> Any:
    """The evaluation loss: the weighted sum over the kinds present in the batch divided by
    their weights, so a label-only evaluation set reports the label loss itself rather
    than (1 − α) times it; with every kind present it equals the training objective."""
    present = sum(float(weights[k]) for k in per_kind)
    return loss / present if present > 0 else loss


# --------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------


@dataclass
class Throughput:
    """Running totals of the training steps: tokens and the seconds they took."""

    tokens: int = 0
    target_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    def rates(self, since: Throughput | None = None, prefix: str = "") -> dict[str, float]:
        """Tokens and target tokens per second (since an earlier snapshot)."""
        base = since or Throughput()
        dt = self.seconds - base.seconds
        if dt <= 0:
            return {}
        return {
            f"{prefix}tokens_per_second": round((self.tokens - base.tokens) / dt, 2),
            f"{prefix}target_tokens_per_second": round(
                (self.target_tokens - base.target_tokens) / dt, 2
            ),
        }
