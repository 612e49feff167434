"""The run configuration of ``fedcot distill`` (the ``FedCoTConfig`` model).

It lives apart from :mod:`fedcot.config` because it embeds the training and
encoder-decoder configs, whose modules import the training stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fedcot.config import BackendConfig, DataFields, data_fields
from fedcot.cot.encoder_decoder import EncoderDecoderConfig
from fedcot.data.tasks import COT_MAX_NEW_TOKENS
from fedcot.models.backends.base import GenerationParams
from fedcot.privacy.perturb import PerturbConfig
from fedcot.strict import StrictModel
from fedcot.train.multitask import TrainConfig

__all__ = ["FedCoTConfig"]


class FedCoTConfig(StrictModel):
    """``fedcot distill``: the FedCoT client pipeline (perturb → server → decode → train)."""

    task: str = "cqa"
    data: str = Field(
        "../shared/datasets", description="dataset source, or 'synthetic' (private records)"
    )
    fields: DataFields = data_fields()
    train_split: str = "train"
    test_split: str = "test"
    train_limit: int | None = Field(64, ge=1, description="private training examples")
    test_limit: int | None = Field(200, ge=1, description="test examples (None: all)")
    student: BackendConfig = Field(default_factory=BackendConfig)
    server: BackendConfig = Field(
        default_factory=lambda: BackendConfig(model="qwen2.5-coder-0.5b-instruct", batch_size=8),
        description="who writes the rationales (default: the best local teacher measured, "
        "docs/benchmarks.md; gemma3-270m is a base model that rarely reasons)",
    )
    answer_style: Literal["text", "letter"] = Field(
        "text",
        description="multiple choice: the label target is the choice text ('text') or "
        "'(c) choice text' ('letter'); a small model learns the text far better",
    )
    strategy: Literal["exponential", "adaptive", "encoder-decoder", "none"] = "adaptive"
    privacy: PerturbConfig = Field(
        default_factory=PerturbConfig,
        description="mechanism settings; its strategy is taken from the top-level strategy",
    )
    decoder: Literal["inverse-map", "icl", "trained", "identity"] | None = Field(
        None, description="None: identity (none), inverse-map (mechanisms), trained (enc-dec)"
    )
    filter: bool = Field(False, description="drop rationales whose answer disagrees with gold")
    fewshot: int = Field(2, ge=0, le=3, description="public worked examples in server prompts")
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_new_tokens=96),
        description="the server's generation parameters",
    )
    eval_method: Literal["auto", "likelihood", "generate"] = "auto"
    eval_cot: bool = Field(
        False,
        description="score the student by its chain of thought: the rationale task's prompt, "
        "generated and parsed (the label task's prompt otherwise)",
    )
    eval_calculator: bool = Field(
        False,
        description="with eval_cot: redo the arithmetic of the student's chain of thought "
        "exactly before its answer is read (the student's plan, a calculator's results)",
    )
    eval_before: bool = True
    eval_generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_new_tokens=32)
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    encoder_decoder: EncoderDecoderConfig = Field(default_factory=EncoderDecoderConfig)
    stage: Literal["all", "rationales"] = Field(
        "all",
        description="'rationales' stops after decoding (no student): compare teachers and "
        "strategies by rationale fidelity without training",
    )
    seed: int = 0
    output_dir: Path = Path("runs/distill")

    @model_validator(mode="after")
    def _consistent(self) -> FedCoTConfig:
        if self.strategy != "encoder-decoder" and self.privacy.strategy != self.strategy:
            self.privacy = self.privacy.model_copy(update={"strategy": self.strategy})
        # The privacy seed is never derived from the run seed: unset, the mechanism draws
        # come from OS entropy (a server that knew the seed could replay them).
        if "seed" not in self.train.model_fields_set and self.train.seed != self.seed:
            self.train = self.train.model_copy(update={"seed": self.seed})
        if self.server.kind == "replay" and self.strategy != "none" and self.needs_server:
            raise ValueError(
                "server.kind = 'replay' answers only unperturbed prompts: use strategy = 'none'"
            )
        if self.student.kind != "transformers":
            raise ValueError("student.kind must be 'transformers' (the client trains it)")
        if self.eval_cot and self.eval_method == "likelihood":
            raise ValueError("eval_cot generates a chain of thought: use eval_method 'generate'")
        explicit = "eval_generation" in self.model_fields_set and (
            "max_new_tokens" in self.eval_generation.model_fields_set
        )
        if self.eval_cot and not explicit:
            self.eval_generation = self.eval_generation.model_copy(
                update={"max_new_tokens": COT_MAX_NEW_TOKENS}
            )
        dec = self.decoder_name
        if dec == "inverse-map" and self.strategy not in ("exponential", "adaptive"):
            raise ValueError("decoder 'inverse-map' needs strategy 'exponential' or 'adaptive'")
        if dec == "trained" and self.strategy != "encoder-decoder":
            raise ValueError("decoder 'trained' needs strategy 'encoder-decoder'")
        return self

    @property
    def decoder_name(self) -> str:
        """The decoder in use (the configured one, or the strategy's default)."""
        if self.decoder is not None:
            return self.decoder
        return {"none": "identity", "encoder-decoder": "trained"}.get(self.strategy, "inverse-map")

    @property
    def needs_server(self) -> bool:
        """Whether rationales are needed at all (label-only training asks no server)."""
        return self.train.alpha > 0
