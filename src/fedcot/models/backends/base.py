"""The one seam between "what to ask" and "who answers".

Every backend (in-process transformers, llama.cpp, any OpenAI-compatible HTTP server)
implements :class:`Backend`. The pipeline code never knows which one it talks to.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What a prompt is and how it renders live in the data layer; re-exported for the backends.
from fedcot.data.prompts import ChatMessage, Prompt, is_chat, render_prompt

__all__ = [
    "GREEDY_BELOW",
    "Backend",
    "ChatMessage",
    "Completion",
    "FinishReason",
    "GenerationParams",
    "Prompt",
    "TopKLogprobs",
    "apply_stop",
    "is_chat",
    "render_prompt",
]

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily."""


class GenerationParams(BaseModel):
    """Decoding parameters shared by every backend.

    ``temperature == 0`` means greedy decoding; so does any temperature below
    ``GREEDY_BELOW`` (dividing logits by 1e-300 overflows to inf and breaks sampling).
    ``seed`` makes sampling reproducible where the backend allows it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(128, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k filtering")
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_tuple(cls, v: object) -> object:
        if isinstance(v, str):
            return (v,)
        if isinstance(v, list):
            return tuple(v)
        return v

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must be non-empty")
        return v

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (temperature 0 or below ``GREEDY_BELOW``)."""
        return self.temperature < GREEDY_BELOW


FinishReason = Literal["stop", "length"]


@dataclass
class Completion:
    """One generated answer.

    ``finish_reason`` is ``"stop"`` when the model ended (EOS or a stop string) and
    ``"length"`` when it hit ``max_new_tokens``.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass
class TopKLogprobs:
    """Per-position top-K next-token log-probabilities of a text under a model.

    ``token_ids[i]`` is the i-th token of the text; ``topk_ids[i]`` / ``topk_logprobs[i]``
    are the K most likely tokens at position i, i.e. predictions of token ``i + 1``.
    """

    token_ids: list[int]
    topk_ids: list[list[int]] = field(default_factory=list)
    topk_logprobs: list[list[float]] = field(default_factory=list)


class Backend(abc.ABC):
    """A text generator. Subclasses implement :meth:`generate`."""

    #: A short name of the model behind the backend (for manifests and logs).
    model_name: str = "unknown"

    @property
    def supports_chat(self) -> bool:
        """Whether chat prompts (lists of messages) are accepted."""
        return True

    @abc.abstractmethod
    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Completion]:
        """Generate one completion per prompt, in order."""

    def topk_logprobs(self, texts: Sequence[str], k: int) -> list[TopKLogprobs]:
        """Top-K next-token log-probabilities for every position of each text."""
        raise NotImplementedError(f"{type(self).__name__} cannot return top-K log-probabilities")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, model memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string. Returns (text, whether it was cut)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1 and i < cut:
            cut = i
    return text[:cut], cut < len(text)
