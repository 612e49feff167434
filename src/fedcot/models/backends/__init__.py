"""Generation backends behind one interface: :class:`Backend`.

``make_backend`` builds one by kind; the heavy dependencies of each kind are imported only
when that kind is used.
"""

from __future__ import annotations

from typing import Any

from fedcot.errors import ConfigError
from fedcot.models.backends.base import (
    Backend,
    ChatMessage,
    Completion,
    GenerationParams,
    Prompt,
    TopKLogprobs,
)
from fedcot.models.registry import resolve

BACKEND_KINDS = ("transformers", "openai", "llamacpp")

__all__ = [
    "BACKEND_KINDS",
    "Backend",
    "ChatMessage",
    "Completion",
    "GenerationParams",
    "Prompt",
    "TopKLogprobs",
    "make_backend",
]


def make_backend(kind: str, model: str, **options: Any) -> Backend:
    """Build a backend.

    - ``transformers``: ``model`` is an embedded name, a ``.gguf`` file or a transformers
      folder; options: ``batch_size``, ``max_input_tokens``.
    - ``openai``: ``model`` is the server's model name; options: ``base_url`` (required),
      ``api_key_env``, ``max_concurrency``, ``timeout``, ``max_retries``.
    - ``llamacpp``: ``model`` is a ``.gguf`` file or an embedded name; options: ``n_ctx``,
      ``n_threads``, ``seed``.
    """
    # lazy: the kind decides which backend module (and its heavy dependency) is imported
    if kind == "transformers":
        from fedcot.models.backends.transformers import TransformersBackend

        return TransformersBackend.from_pretrained(model, **options)
    if kind == "openai":
        from fedcot.models.backends.openai import OpenAIBackend

        base_url = options.pop("base_url", None)
        if not base_url:
            raise ConfigError(
                "the openai backend needs a base_url",
                hint="set backend.base_url (e.g. http://127.0.0.1:8000/v1) or pass --server URL",
            )
        return OpenAIBackend(base_url, model, **options)
    if kind == "llamacpp":
        from fedcot.models.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(resolve(model).gguf_file(), **options)
    raise ConfigError(
        f"unknown backend kind '{kind}'", hint=f"use one of: {', '.join(BACKEND_KINDS)}"
    )
