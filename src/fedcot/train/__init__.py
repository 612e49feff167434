"""Fine-tuning for both algorithms: LoRA settings and adapters, FedCoT's multi-task (label +
rationale) trainer, FedMKT's logit distillation on sparse top-K targets (``logit_kd``).

Names are imported on first use, so ``import fedcot.train`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "IGNORE_INDEX",
    "LengthBucketSampler",
    "LoraSettings",
    "MultiTaskArguments",
    "MultiTaskCollator",
    "MultiTaskTrainer",
    "SFTItem",
    "SparseRows",
    "TrainConfig",
    "TrainResult",
    "apply_lora",
    "default_loss_weights",
    "load_trained",
    "measure_matmul_gflops",
    "multitask_items",
    "render_prompt",
    "tokenize_groups",
    "tokenize_item",
    "train_multitask",
    "training_flops_per_token",
]

_WHERE = {name: "fedcot.train.multitask" for name in __all__}
_WHERE.update(
    IGNORE_INDEX="fedcot.train.config",
    LengthBucketSampler="fedcot.train.steps",
    LoraSettings="fedcot.train.config",
    MultiTaskArguments="fedcot.train.hf_trainer",
    MultiTaskTrainer="fedcot.train.hf_trainer",
    SparseRows="fedcot.train.sparse",
    apply_lora="fedcot.train.lora",
    load_trained="fedcot.train.lora",
    render_prompt="fedcot.data.prompts",
)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
