"""The run configuration of ``fedcot mkt`` (the ``MKTConfig`` model)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedcot.config import DataFields, data_fields
from fedcot.strict import StrictModel
from fedcot.train.config import LoraSettings

__all__ = ["MKTConfig", "MKTTrainConfig", "PartyConfig"]


class PartyConfig(StrictModel):
    """One party: a name and its model (an embedded name, a GGUF file or a transformers
    folder). Each party has its own tokenizer and its own LoRA adapter."""

    name: str | None = Field(None, description="defaults to 'server' / 'client-<n>'")
    model: str = "smollm2-135m-instruct"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "/" in v or v.strip() in (".", "..")):
            raise ValueError("a party name must be non-empty and hold no '/'")
        return v.strip() if v else v


class _MKTSteps(StrictModel):
    """The keys of ``[train]`` that come before the LoRA ones (see :class:`LoraSettings`)."""

    local_steps: int = Field(20, ge=0, description="client steps on its private data per round")
    server_steps: int = Field(20, ge=0, description="server distillation steps per round")
    client_steps: int = Field(20, ge=0, description="client distillation steps per round")
    batch_size: int = Field(4, ge=1, le=256)
    learning_rate: float = Field(2e-4, gt=0.0)


class MKTTrainConfig(LoraSettings, _MKTSteps):
    """How every party trains (LoRA on all linear layers, AdamW).

    The LoRA keys (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_targets``) are the
    shared :class:`~fedcot.train.config.LoraSettings`.
    """

    max_length: int = Field(256, ge=8, description="tokens per sequence (prompt cut on the left)")


class MKTConfig(StrictModel):
    """``fedcot mkt``: FedMKT rounds between a server LLM and K client SLMs."""

    task: str = "rte"
    data: str = Field("../shared/datasets", description="dataset source (see fedcot eval)")
    fields: DataFields = data_fields()
    split: str = Field("train", description="split cut into the public and private parts")
    test_split: str = "test"
    public_size: int = Field(64, ge=1, description="public examples every party sees")
    private_size: int = Field(64, ge=1, description="private examples per client")
    test_limit: int | None = Field(200, ge=1, description="test examples (None: all)")
    server: PartyConfig = Field(default_factory=lambda: PartyConfig(model="gemma3-270m"))
    clients: list[PartyConfig] = Field(
        default_factory=lambda: [PartyConfig(), PartyConfig()], min_length=1, max_length=64
    )
    rounds: int = Field(2, ge=1, le=1000)
    top_k: int = Field(16, ge=1, le=1024, description="logits sent per token")
    selection: Literal["dual-min-ce", "min-ce", "weighted-mean"] = "dual-min-ce"
    loss_unit: Literal["char", "token"] = Field(
        "char",
        description="per-sample loss for selection: NLL per answer character (comparable "
        "across tokenizers) or per token (as in the paper)",
    )
    temperature: float = Field(1.0, gt=0.0, description="weighted-mean: softmax temperature")
    lam: float = Field(
        0.9, ge=0.0, le=1.0, description="loss = lam·L_FT + (1 − lam)·L_KD (λ of the paper)"
    )
    mode: Literal["mutual", "one-way", "standalone"] = Field(
        "mutual",
        description="mutual: both directions; one-way: LLM → SLMs only (the server does not "
        "learn); standalone: no exchange, every party fine-tunes on its own data with the "
        "same steps (the baseline)",
    )
    fedavg: bool = Field(
        False, description="average the clients' LoRA after local training (same model only)"
    )
    train: MKTTrainConfig = Field(default_factory=MKTTrainConfig)
    eval_each_round: bool = True
    seed: int = 0
    output_dir: Path = Path("runs/mkt")

    @model_validator(mode="after")
    def _consistent(self) -> MKTConfig:
        names = self.party_names()
        if len(set(names)) != len(names):
            raise ValueError(f"party names must be distinct, got {names}")
        if self.fedavg and len({c.model for c in self.clients}) != 1:
            raise ValueError("fedavg needs every client on the same model (homogeneous clients)")
        return self

    def party_names(self) -> list[str]:
        """Server first, then the clients in order."""
        names = [self.server.name or "server"]
        names += [c.name or f"client-{i + 1}" for i, c in enumerate(self.clients)]
        return names

    @property
    def scenario(self) -> str:
        """one-to-one, one-to-many homogeneous or one-to-many heterogeneous."""
        if len(self.clients) == 1:
            return "one-to-one"
        if len({c.model for c in self.clients}) == 1:
            return "one-to-many homogeneous"
        return "one-to-many heterogeneous"
