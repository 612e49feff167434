"""What a prompt is, and how it renders to the text a tokenizer reads.

A prompt is a plain completion string or a chat conversation (a list of messages). Tasks
build prompts; backends, the trainers and the serving code render them with
:func:`render_prompt`. The tokenizer is duck-typed (anything with ``chat_template`` and
``apply_chat_template``), so this module imports no model library.
"""

from __future__ import annotations

from typing import Any

from fedcot.errors import ConfigError

__all__ = ["ChatMessage", "Prompt", "is_chat", "render_prompt"]

ChatMessage = dict[str, str]
"""One chat turn: ``{"role": "system"|"user"|"assistant", "content": str}``."""

Prompt = str | list[ChatMessage]
"""A plain-completion prompt (str) or a chat conversation (list of messages)."""


def is_chat(prompt: Prompt) -> bool:
    """True for a chat conversation, False for a plain string prompt."""
    if isinstance(prompt, str):
        return False
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in prompt
    ):
        return True
    raise TypeError(
        "a prompt is either a string or a list of {'role': ..., 'content': ...} messages, "
        f"got {type(prompt).__name__}"
    )


def render_prompt(tokenizer: Any, prompt: Prompt) -> tuple[str, bool]:
    """Prompt → (text, whether the tokenizer should add its special tokens).

    A chat goes through the tokenizer's chat template with the generation prompt (which
    already holds BOS and role markers); a string is used as is. The one rendering rule of
    generation, scoring and training.
    """
    if not is_chat(prompt):
        return str(prompt), True
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            "the tokenizer has no chat template, so chat prompts cannot be rendered",
            hint="build plain prompts (chat = false) for this model",
        )
    text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return str(text), False
