"""Multi-task fine-tuning of a small causal LM: labels and rationales (DSS / FedCoT).

Each training example becomes a *group* of sequences, one per task: the ``label`` task (the
plain instruction, target = the answer) and the ``rationale`` task (the step-by-step
instruction, target = the teacher's chain of thought ending in the answer). The two
instructions differ, so they act as task prefixes. The loss is

    loss = Σ_kind weight[kind] · mean over the batch's sequences of that kind of
           (mean token cross-entropy of the sequence's target tokens)

which for the defaults is ``α · L_rationale + (1 − α) · L_label``. Only target tokens (and the
EOS that ends them) count; prompt and padding tokens are masked with ``-100``.

A step is one forward and one backward: every sequence of the batch's groups, of every kind,
goes into one right-padded batch, and the per-kind losses are read off that one output through
each row's kind (:func:`~fedcot.train.steps.weighted_loss`). Batches are length-grouped
(:class:`~fedcot.train.steps.LengthBucketSampler`) so that little of that batch is padding,
and the trainer reports its throughput: non-pad input tokens and target tokens per second of
training steps, and the share of the machine's float32 matmul rate that this amounts to
(:func:`training_flops_per_token`, :func:`measure_matmul_gflops`).

:class:`TrainConfig` and the data helpers import neither torch nor transformers; the
transformers subclasses (``MultiTaskArguments``, ``MultiTaskTrainer``) live in
:mod:`fedcot.train.hf_trainer`, which :func:`train_multitask` imports when it runs, so that
reading a config stays fast.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from fedcot.data.prompts import render_prompt
from fedcot.errors import ConfigError
from fedcot.strict import StrictModel
from fedcot.train.config import IGNORE_INDEX, LoraSettings
from fedcot.train.lora import apply_lora
from fedcot.train.steps import LengthBucketSampler, eval_mean, group_length

if TYPE_CHECKING:
    from fedcot.data.tasks import Example, Task
    from fedcot.train.steps import Throughput

__all__ = [
    "IGNORE_INDEX",
    "LengthBucketSampler",
    "MultiTaskCollator",
    "SFTItem",
    "TrainConfig",
    "TrainResult",
    "default_loss_weights",
    "eval_mean",
    "group_length",
    "measure_matmul_gflops",
    "multitask_items",
    "render_prompt",
    "tokenize_groups",
    "tokenize_item",
    "train_multitask",
    "training_flops_per_token",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------


@dataclass
class SFTItem:
    """One supervised sequence: a rendered prompt and the target the model learns to write."""

    prompt: str
    """Prompt text, already rendered (chat template applied when chat)."""
    target: str
    """What the model learns to write after the prompt; EOS is appended when tokenized."""
    kind: str
    """Loss group: ``"label"``, ``"rationale"``, ``"encode"``, ``"decode"``, ..."""
    add_special_tokens: bool = False
    """True for plain (non-chat) prompts: the tokenizer adds BOS etc."""


def multitask_items(
    task: Task,
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    chat: bool,
    alpha: float,
) -> list[list[SFTItem]]:
    """One group of items per example (in order; a group may be empty).

    * a ``"label"`` item when ``alpha < 1``: the plain instruction, target = the answer;
    * a ``"rationale"`` item when ``alpha > 0`` and the example has a rationale: the
      step-by-step instruction, target = ``"<rationale> So the answer is <answer>."``.

    The two instructions differ and act as the task prefixes. Examples without a rationale
    give only the label item. Plain prompts end in ``"Answer:"``, so their targets start with
    a space (the same continuation that likelihood evaluation scores).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha = {alpha} is out of range", hint="alpha must be in [0, 1]")
    groups: list[list[SFTItem]] = []
    sep = "" if chat else " "
    for ex in examples:
        group: list[SFTItem] = []
        if alpha < 1.0:
            text, special = render_prompt(tokenizer, task.prompt(ex, chat=chat, cot=False))
            group.append(SFTItem(text, sep + task.answer_text(ex), "label", special))
        if alpha > 0.0 and (ex.rationale or "").strip():
            text, special = render_prompt(tokenizer, task.prompt(ex, chat=chat, cot=True))
            group.append(SFTItem(text, sep + task.target_text(ex, cot=True), "rationale", special))
        groups.append(group)
    return groups


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


class _TrainObjective(StrictModel):
    """The keys of ``[train]`` that come before the LoRA ones (see :class:`LoraSettings`)."""

    alpha: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="weight of the rationale loss: loss = alpha·L_rationale + (1-alpha)·L_label",
    )
    method: Literal["lora", "full"] = Field(
        "lora", description="'lora': train a LoRA adapter; 'full': train every weight"
    )


class TrainConfig(LoraSettings, _TrainObjective):
    """How a client model is fine-tuned (the ``[train]`` table of a run config).

    The LoRA keys (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_targets``) are the
    shared :class:`~fedcot.train.config.LoraSettings`.
    """

    epochs: float = Field(1.0, gt=0.0, description="passes over the training data")
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps; overrides epochs when set"
    )
    batch_size: int = Field(
        4, ge=1, description="examples (groups of label + rationale sequences) per device step"
    )
    grad_accum: int = Field(1, ge=1, description="device steps accumulated per optimizer step")
    group_by_length: bool = Field(
        True,
        description="batch examples of similar length together (less padding); the batch "
        "order is still shuffled with the seed",
    )
    learning_rate: float = Field(2e-4, gt=0.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    warmup_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of the steps with linear warm-up"
    )
    max_length: int = Field(
        384,
        ge=8,
        description="tokens per sequence; a longer prompt is cut from the left, the target kept",
    )
    logging_steps: int = Field(5, ge=1, description="log the losses every this many steps")
    save_steps: int | None = Field(
        None, ge=1, description="checkpoint every this many steps; None = at each epoch end"
    )
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept (older ones deleted)")
    eval_each_epoch: bool = Field(
        True, description="evaluate the loss on the eval data after each epoch"
    )
    seed: int = Field(0, ge=0, description="seed of LoRA init, data order and dropout")


def default_loss_weights(alpha: float) -> dict[str, float]:
    """``{"label": 1 - alpha, "rationale": alpha}``."""
    return {"label": 1.0 - alpha, "rationale": alpha}


# --------------------------------------------------------------------------------------
# Tokenization and batching
# --------------------------------------------------------------------------------------


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            "the tokenizer has no EOS token", hint="set tokenizer.eos_token before training"
        )
    return int(eos)


def tokenize_item(item: SFTItem, tokenizer: Any, max_length: int) -> dict[str, Any]:
    """``{"input_ids", "labels", "kind"}`` of one item: prompt + target + EOS.

    Labels are ``-100`` on the prompt. When the sequence is longer than ``max_length`` the
    prompt is cut from the left and the target kept; a target that alone does not fit keeps
    its first ``max_length - 1`` tokens behind the last prompt token.
    """
    if max_length < 2:
        raise ConfigError("max_length must be at least 2")
    prompt = list(tokenizer(item.prompt, add_special_tokens=item.add_special_tokens)["input_ids"])
    target = list(tokenizer(item.target, add_special_tokens=False)["input_ids"])
    target.append(_eos_id(tokenizer))
    if not prompt:  # nothing to condition on: start from EOS, as generation would
        prompt = [_eos_id(tokenizer)]
    if len(prompt) + len(target) > max_length:
        target = target[: max_length - 1]
        prompt = prompt[-(max_length - len(target)) :]
    return {
        "input_ids": prompt + target,
        "labels": [IGNORE_INDEX] * len(prompt) + target,
        "kind": item.kind,
    }


def tokenize_groups(
    groups: Iterable[Sequence[SFTItem]], tokenizer: Any, max_length: int
) -> list[list[dict[str, Any]]]:
    """:func:`tokenize_item` over every item; empty groups are dropped."""
    out = []
    for group in groups:
        seqs = [tokenize_item(it, tokenizer, max_length) for it in group]
        if seqs:
            out.append(seqs)
    return out


class MultiTaskCollator:
    """Pads a list of groups into one batch of all their sequences.

    Right padding; ``labels`` are ``-100`` on prompt and padding; ``kind_ids`` maps each
    sequence to the index of its kind in ``kinds``.
    """

    def __init__(self, pad_token_id: int, kinds: Sequence[str]) -> None:
        self.pad_token_id = int(pad_token_id)
        self.kinds = list(kinds)
        self._index = {k: i for i, k in enumerate(self.kinds)}

    def __call__(self, groups: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
        import torch

        seqs = [s for g in groups for s in g]
        if not seqs:
            raise ValueError("a batch without sequences")
        width = max(len(s["input_ids"]) for s in seqs)
        n = len(seqs)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        kind_ids = torch.empty(n, dtype=torch.long)
        for r, s in enumerate(seqs):
            m = len(s["input_ids"])
            ids[r, :m] = torch.tensor(s["input_ids"], dtype=torch.long)
            mask[r, :m] = 1
            labels[r, :m] = torch.tensor(s["labels"], dtype=torch.long)
            try:
                kind_ids[r] = self._index[s["kind"]]
            except KeyError:
                raise ConfigError(
                    f"a sequence of kind {s['kind']!r} has no loss weight",
                    hint=f"give a weight to each kind (known: {', '.join(self.kinds)})",
                ) from None
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "kind_ids": kind_ids}


# --------------------------------------------------------------------------------------
# Throughput
# --------------------------------------------------------------------------------------


def training_flops_per_token(model: Any) -> float:
    """Matmul FLOPs of one training token through ``model``'s linear layers.

    With N the weights of a linear layer: forward 2·N, backward 2·N for the gradient of its
    input, and 2·N more for the gradient of its weights when they are trained. So about 6·N
    per token for full fine-tuning and 4·N + 6·N_LoRA with LoRA, whose frozen weights are
    still back-propagated through. Counted over every ``nn.Linear`` (LM head included, tied
    or not; a cut-off of logits to the target positions is not taken off); the attention
    score products, embeddings and norms are left out.
    """
    import torch

    total = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n = module.weight.numel()
            total += (6.0 if module.weight.requires_grad else 4.0) * n
    return total


def measure_matmul_gflops(seconds: float = 1.0, size: int = 1024) -> float:
    """This machine's float32 ``torch.matmul`` rate (GFLOP/s) on ``size``×``size`` matrices.

    Multiplies for about ``seconds`` after a warm-up with torch's current thread count and
    counts 2·size³ FLOPs a product. The global RNGs are left alone.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    c = torch.empty(size, size)
    torch.matmul(a, b, out=c)  # warm-up (thread pool, caches)
    n, t0 = 0, time.perf_counter()
    while True:
        torch.matmul(a, b, out=c)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return 2.0 * size**3 * n / dt / 1e9


_MATMUL_GFLOPS: list[float] = []


def _machine_matmul_gflops() -> float:
    """:func:`measure_matmul_gflops` for half a second, once per process."""
    if not _MATMUL_GFLOPS:
        _MATMUL_GFLOPS.append(measure_matmul_gflops(seconds=0.5))
    return _MATMUL_GFLOPS[0]


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train_multitask` produced."""

    model: Any
    """The trained model (a PeftModel for LoRA), in eval mode."""
    output_dir: Path
    adapter_dir: Path
    """Final save: LoRA adapter (or full model) + tokenizer."""
    steps: int
    seconds: float
    log_history: list[dict]
    resumed_from: str | None
    tokens: int = 0
    """Non-pad input tokens of the training steps this call ran (not those before a resume)."""
    target_tokens: int = 0
    """Of those, the target tokens (the ones the loss counts)."""
    padded_tokens: int = 0
    """Cells of those steps' padded batches: tokens plus padding."""
    step_seconds: float = 0.0
    """Seconds inside training steps (forward, backward, optimizer step)."""
    flops_per_token: float = 0.0
    """:func:`training_flops_per_token` of the trained model."""
    matmul_gflops: float = 0.0
    """The machine's float32 matmul rate (GFLOP/s), :func:`measure_matmul_gflops`."""

    @property
    def tokens_per_second(self) -> float:
        """Non-pad input tokens per second of training steps."""
        return self.tokens / self.step_seconds if self.step_seconds > 0 else 0.0

    @property
    def target_tokens_per_second(self) -> float:
        """Target tokens per second of training steps."""
        return self.target_tokens / self.step_seconds if self.step_seconds > 0 else 0.0

    @property
    def matmul_share(self) -> float:
        """``tokens_per_second × flops_per_token`` as a share of ``matmul_gflops``."""
        if self.matmul_gflops <= 0:
            return 0.0
        return self.tokens_per_second * self.flops_per_token / 1e9 / self.matmul_gflops

    @property
    def padding_share(self) -> float:
        """Share of the padded training batches that was padding."""
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    def losses(self, key: str = "loss") -> list[float]:
        """The logged values of ``key`` (``"loss"``, ``"loss_rationale"``, ``"eval_loss"``)."""
        return [float(h[key]) for h in self.log_history if key in h]


CHECKPOINT_PREFIX = "checkpoint-"


def _checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        step = p.name[len(CHECKPOINT_PREFIX) :]
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and step.isdigit():
            found.append((int(step), p))
    return [p for _, p in sorted(found)]


def _last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing (its trainer_state.json is last)."""
    last = None
    for p in _checkpoints(folder):
        if (p / "trainer_state.json").is_file():
            last = p
        else:
            logger.warning("ignoring incomplete checkpoint %s", p)
    return last


@contextmanager
def _preserve_rng() -> Any:
    """Restore the global python, numpy and torch RNG states afterwards."""
    import numpy as np
    import torch

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _prepare_data(
    groups: Sequence[Sequence[SFTItem]], weights: Mapping[str, float], what: str
) -> list[list[SFTItem]]:
    """Drop items whose kind has weight 0 (and the groups left empty); check the rest."""
    kept: list[list[SFTItem]] = []
    for group in groups:
        for it in group:
            if it.kind not in weights:
                raise ConfigError(
                    f"{what} holds items of kind {it.kind!r}, which has no loss weight",
                    hint=f"add a weight for {it.kind!r} to loss_weights "
                    f"(now: {', '.join(weights) or 'none'})",
                )
        g = [it for it in group if weights[it.kind] > 0]
        if g:
            kept.append(g)
    return kept


def _rich_progress() -> Any:
    from fedcot.train.hf_trainer import RichProgress  # lazy: imports torch, transformers

    return RichProgress()


def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("FEDCOT_PROGRESS", "1") != "0"


def _throughput(trainer: Any, model: Any, matmul_gflops: float | None) -> dict[str, Any]:
    """The TrainResult fields on speed (the rates are derived from them)."""
    meter: Throughput = trainer.throughput
    return {
        "tokens": meter.tokens,
        "target_tokens": meter.target_tokens,
        "padded_tokens": meter.padded_tokens,
        "step_seconds": round(meter.seconds, 4),
        "flops_per_token": training_flops_per_token(model),
        "matmul_gflops": round(
            float(matmul_gflops) if matmul_gflops else _machine_matmul_gflops(), 2
        ),
    }


def _log_throughput(r: TrainResult) -> None:
    logger.info(
        "training: %.0f tokens/s (%.0f target tokens/s, %.0f %% padding); %.1f GFLOP/s "
        "at %.3g FLOPs/token = %.1f %% of the float32 matmul rate (%.1f GFLOP/s)",
        r.tokens_per_second,
        r.target_tokens_per_second,
        100 * r.padding_share,
        r.tokens_per_second * r.flops_per_token / 1e9,
        r.flops_per_token,
        100 * r.matmul_share,
        r.matmul_gflops,
    )


def _loss_weights(loss_weights: Mapping[str, float] | None, alpha: float) -> dict[str, float]:
    """``loss_weights`` (default: :func:`default_loss_weights`), checked finite and >= 0."""
    weights = {str(k): float(v) for k, v in (loss_weights or default_loss_weights(alpha)).items()}
    for k, v in weights.items():
        if not math.isfinite(v) or v < 0:
            raise ConfigError(
                f"loss weight of {k!r} is {v}", hint="loss weights must be finite and >= 0"
            )
    return weights


@dataclass
class _TrainingData:
    """The items that train and evaluate, and the loss kinds that count."""

    train: list[list[SFTItem]]
    eval: list[list[SFTItem]]
    kinds: list[str]
    """The kinds with a positive weight, in the order of the weights."""
    active: dict[str, float]
    """Their weights."""


def _training_data(
    groups: Sequence[Sequence[SFTItem]],
    eval_groups: Sequence[Sequence[SFTItem]] | None,
    weights: Mapping[str, float],
) -> _TrainingData:
    """The items of positive weight; errors when nothing (or no rationale) is left to train."""
    if not any(len(g) for g in groups):
        raise ConfigError(
            "no training items", hint="give training examples (and check the data filters)"
        )
    data = _prepare_data(groups, weights, "the training data")
    present = {it.kind for g in data for it in g}
    for kind, w in weights.items():
        if w > 0 and kind not in present:
            if kind == "rationale":
                raise ConfigError(
                    f"the rationale loss has weight {w}, but no training example has a rationale",
                    hint="give examples rationales or set alpha = 0",
                )
            logger.warning("loss kind %r has weight %s but no training items", kind, w)
    if not data:
        raise ConfigError(
            "no training items with a positive loss weight",
            hint="check alpha / loss_weights against the kinds of the items",
        )
    kinds = [k for k, w in weights.items() if w > 0]
    return _TrainingData(
        train=data,
        eval=_prepare_data(eval_groups, weights, "the eval data") if eval_groups else [],
        kinds=kinds,
        active={k: weights[k] for k in kinds},
    )


def _resume_checkpoint(ckpt_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: start fresh); the others after it are deleted.

    Without one, every old checkpoint goes. ``ckpt_dir`` exists afterwards.
    """
    resume_from: Path | None = None
    if resume:
        resume_from = _last_complete_checkpoint(ckpt_dir)
        if resume_from is None:
            logger.warning("no checkpoint in %s: training starts fresh", ckpt_dir)
    for p in _checkpoints(ckpt_dir):
        # Old checkpoints of another run (or unfinished ones) would confuse the rotation
        # and a later resume.
        if resume_from is None or int(p.name[len(CHECKPOINT_PREFIX) :]) > int(
            resume_from.name[len(CHECKPOINT_PREFIX) :]
        ):
            shutil.rmtree(p, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return resume_from


def _trainer_arguments(
    cfg: TrainConfig, ckpt_dir: Path, active: Mapping[str, float], evaluating: bool
) -> Any:
    """The ``MultiTaskArguments`` of ``cfg``: CPU, no reports, our own progress bar."""
    from fedcot.train.hf_trainer import MultiTaskArguments  # lazy: imports torch, transformers

    return MultiTaskArguments(
        output_dir=str(ckpt_dir),
        loss_weights=active,
        max_length=cfg.max_length,
        length_buckets=cfg.group_by_length,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a value < 1 is a ratio
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps is not None else -1,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="epoch" if evaluating and cfg.eval_each_epoch else "no",
        prediction_loss_only=True,
        label_names=["labels"],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=True,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )


def _run_trainer(
    model: Any,
    tokenizer: Any,
    train_ds: list[list[dict[str, Any]]],
    eval_ds: list[list[dict[str, Any]]] | None,
    cfg: TrainConfig,
    data: _TrainingData,
    ckpt_dir: Path,
    resume_from: Path | None,
    callbacks: Sequence[Any],
    progress: bool,
) -> Any:
    """LoRA (or all weights) made trainable, trained, evaluated; the finished trainer.

    The global RNG states are the same afterwards.
    """
    import torch
    from transformers import PrinterCallback

    from fedcot.train.hf_trainer import MultiTaskTrainer  # lazy: imports torch, transformers

    with _preserve_rng():
        torch.manual_seed(cfg.seed)  # LoRA initialisation
        if cfg.method == "lora":
            model = apply_lora(model, cfg)
        else:
            model.requires_grad_(True)
        evaluating = eval_ds is not None
        show = _progress_enabled(progress)
        trainer = MultiTaskTrainer(
            model=model,
            args=_trainer_arguments(cfg, ckpt_dir, data.active, evaluating),
            data_collator=MultiTaskCollator(tokenizer.pad_token_id, data.kinds),
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            callbacks=[*callbacks, _rich_progress()] if show else list(callbacks),
        )
        # transformers prints every log dict (PrinterCallback, or its tqdm bar's on_log);
        # our own bar shows the step and the latest losses instead.
        from transformers import ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if evaluating and not cfg.eval_each_epoch:
            trainer.evaluate()
    return trainer


def train_multitask(
    model: Any,
    tokenizer: Any,
    groups: Sequence[Sequence[SFTItem]],
    cfg: TrainConfig,
    output_dir: str | os.PathLike[str],
    *,
    loss_weights: Mapping[str, float] | None = None,
    eval_groups: Sequence[Sequence[SFTItem]] | None = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    matmul_gflops: float | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``groups`` with the weighted multi-task loss.

    ``loss_weights`` defaults to ``{"label": 1 - alpha, "rationale": alpha}``; kinds with
    weight 0 are dropped from the data. LoRA (``cfg.method = "lora"``) or full fine-tuning
    on CPU. Checkpoints go to ``output_dir/checkpoints``; ``resume`` continues from the last
    complete one there (a fresh run clears old ones). The final model (LoRA adapter, or the
    full model) and the tokenizer are saved to ``output_dir/adapter``.

    The result reports the training throughput (non-pad and target tokens per second of
    training steps) and its share of the float32 matmul rate ``matmul_gflops``; when that is
    not given it is measured once per process (half a second).
    """
    weights = _loss_weights(loss_weights, cfg.alpha)
    data = _training_data(groups, eval_groups, weights)
    out = Path(output_dir)
    ckpt_dir = out / "checkpoints"
    adapter_dir = out / "adapter"
    resume_from = _resume_checkpoint(ckpt_dir, resume)

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_ds = tokenize_groups(data.train, tokenizer, cfg.max_length)
    eval_ds = tokenize_groups(data.eval, tokenizer, cfg.max_length) if data.eval else None

    # lazy: imports torch, transformers; loaded here, before the clock starts
    import fedcot.train.hf_trainer  # noqa: F401

    t0 = time.perf_counter()
    trainer = _run_trainer(
        model, tokenizer, train_ds, eval_ds, cfg, data, ckpt_dir, resume_from, callbacks, progress
    )
    model = trainer.model
    model.eval()
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    seconds = round(time.perf_counter() - t0, 2)
    result = TrainResult(
        model=model,
        output_dir=out,
        adapter_dir=adapter_dir,
        steps=int(trainer.state.global_step),
        seconds=seconds,
        log_history=list(trainer.state.log_history),
        resumed_from=str(resume_from) if resume_from else None,
        **_throughput(trainer, model, matmul_gflops),
    )
    _log_throughput(result)
    return result
