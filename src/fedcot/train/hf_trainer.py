"""The transformers subclasses of multi-task training: arguments, trainer and callbacks.

This module imports transformers (seconds), so :mod:`fedcot.train.multitask` imports it only
inside :func:`~fedcot.train.multitask.train_multitask`, and ``fedcot.train`` loads it on
first access to :class:`MultiTaskArguments` or :class:`MultiTaskTrainer`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import transformers

from fedcot.progress import console
from fedcot.train.config import IGNORE_INDEX
from fedcot.train.steps import (
    LengthBucketSampler,
    Throughput,
    accepts_logits_to_keep,
    eval_mean,
    group_length,
    weighted_loss,
)

__all__ = ["MultiTaskArguments", "MultiTaskTrainer", "RichProgress", "StepTimer"]


@dataclass
class MultiTaskArguments(transformers.TrainingArguments):
    """TrainingArguments plus the per-kind loss weights and the sequence length."""

    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"label": 0.5, "rationale": 0.5},
        metadata={"help": "loss weight of each sequence kind"},
    )
    max_length: int = field(default=384, metadata={"help": "tokens per sequence"})
    length_buckets: bool = field(
        default=True,
        metadata={"help": "length-grouped training batches (LengthBucketSampler)"},
    )


class StepTimer(transformers.TrainerCallback):
    """Adds up the seconds of training steps: forward, backward and optimizer step."""

    def __init__(self, meter: Throughput) -> None:
        self.meter = meter
        self._t0: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self._t0 is not None:
            self.meter.seconds += time.perf_counter() - self._t0
            self._t0 = None


class MultiTaskTrainer(transformers.Trainer):
    """Trainer whose loss is the weighted sum of per-kind mean sequence cross-entropies.

    Batches come from :class:`~fedcot.train.multitask.MultiTaskCollator`: all sequences of
    all kinds in one padded batch, so a step is one forward and one backward. The model
    never sees ``labels``: the loss is computed here, so the weighting is exact. The loss is
    a per-batch mean, so the Trainer divides it by the gradient-accumulation steps.
    Per-kind losses appear in the log history as ``loss_<kind>`` (training) and
    ``eval_loss_<kind>``; ``tokens_per_second`` and ``target_tokens_per_second`` (since
    the last log) next to them, and run totals (``train_tokens_per_second``, ...) in the
    final log. Training batches are length-grouped (``length_buckets``).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The loss ignores num_items_in_batch; this skips counting label tokens.
        self.model_accepts_loss_kwargs = False
        weights = getattr(self.args, "loss_weights", None) or {"label": 0.5, "rationale": 0.5}
        self.kinds: list[str] = list(weights)
        self.kind_weights: list[float] = [float(weights[k]) for k in self.kinds]
        self._use_logits_to_keep = accepts_logits_to_keep(self.model)
        self._kind_sums: dict[str, dict[int, list[float]]] = {"train": {}, "eval": {}}
        self.throughput = Throughput()
        self._logged = Throughput()
        self.add_callback(StepTimer(self.throughput))

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not getattr(self.args, "length_buckets", False) or not isinstance(dataset, Sequence):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return LengthBucketSampler(
            [group_length(g) for g in dataset],
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            seed=seed,
        )

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        loss, per_kind, outputs = weighted_loss(
            model, inputs, self.kind_weights, self._use_logits_to_keep
        )
        if not model.training:
            loss = eval_mean(loss, per_kind, self.kind_weights)
        else:
            meter = self.throughput
            mask = inputs.get("attention_mask")
            ids = inputs["input_ids"]
            meter.tokens += int(mask.sum()) if mask is not None else int(ids.numel())
            meter.target_tokens += int(inputs["labels"].ne(IGNORE_INDEX).sum())
            meter.padded_tokens += int(ids.numel())
        sums = self._kind_sums["train" if model.training else "eval"]
        for k, v in per_kind.items():
            acc = sums.setdefault(k, [0.0, 0])
            acc[0] += float(v.detach())
            acc[1] += 1
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        self._kind_sums["eval"] = {}
        return super().evaluate(*args, **kwargs)

    def _flush(self, phase: str, prefix: str, logs: dict[str, float]) -> None:
        for k, (total, count) in sorted(self._kind_sums[phase].items()):
            if count:
                logs[f"{prefix}{self.kinds[k]}"] = round(total / count, 6)
        self._kind_sums[phase] = {}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            self._flush("train", "loss_", logs)
            logs.update(self.throughput.rates(since=self._logged))
            self._logged = Throughput(**vars(self.throughput))
        if "train_runtime" in logs:  # the final log of train()
            meter = self.throughput
            logs.update(meter.rates(prefix="train_"))
            logs["train_tokens"] = meter.tokens
            logs["train_target_tokens"] = meter.target_tokens
            logs["train_step_seconds"] = round(meter.seconds, 3)
        if "eval_loss" in logs:
            self._flush("eval", "eval_loss_", logs)
        super().log(logs, start_time)


class RichProgress(transformers.TrainerCallback):
    """A rich progress bar over optimiser steps, showing the latest losses."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console,
        )
        self._progress.start()
        self._task = self._progress.add_task("", total=state.max_steps, completed=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is not None and logs:
            shown = {k: v for k, v in logs.items() if k.startswith(("loss", "eval_loss"))}
            text = "  ".join(f"{k} {v:.3f}" for k, v in shown.items())
            if "tokens_per_second" in logs:
                text += f"  {logs['tokens_per_second']:.0f} tok/s"
            self._progress.update(self._task, description=text)

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
