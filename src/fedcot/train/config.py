"""Training settings shared by both algorithms: the LoRA adapter, and the ignored label.

FedCoT's ``[train]`` table (:class:`~fedcot.train.multitask.TrainConfig`) and FedMKT's
(:class:`~fedcot.mkt.config.MKTTrainConfig`) both inherit :class:`LoraSettings`, so the LoRA
keys, their defaults and their checks are declared once; :func:`~fedcot.train.lora.apply_lora`
takes either. Imports neither torch nor transformers.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from fedcot.strict import StrictModel

__all__ = ["IGNORE_INDEX", "LoraSettings"]

#: Label value of tokens that do not count in the loss (prompt and padding).
IGNORE_INDEX = -100


class LoraSettings(StrictModel):
    """A LoRA adapter: rank, scaling, dropout and the modules it wraps.

    A config that inherits it keeps its own field order by listing, as the base *after*
    this one, a class holding the fields that come before the LoRA keys (pydantic orders
    fields by the reversed MRO); the dumped config of a run folder must not change, since
    resuming compares it as text.
    """

    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    lora_targets: str | list[str] = Field(
        "all-linear",
        description="modules that get LoRA: 'all-linear', or module names such as "
        "['q_proj', 'v_proj']",
    )

    @field_validator("lora_targets")
    @classmethod
    def _targets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("lora_targets is empty")
            return v.strip()
        names = [str(x).strip() for x in v]
        if not names or not all(names):
            raise ValueError("lora_targets needs at least one module name")
        return names
