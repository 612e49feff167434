"""An in-process GGUF backend on llama.cpp (the optional extra ``fedcot[llamacpp]``).

``llama-cpp-python`` is imported lazily, inside :class:`LlamaCppBackend`, so that importing
this module never needs it. Generation is sequential: one llama.cpp context serves one
stream at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcot.errors import BackendError, ModelNotFoundError, require
from fedcot.models.backends.base import (
    Backend,
    Completion,
    FinishReason,
    GenerationParams,
    Prompt,
    TopKLogprobs,
    apply_stop,
    is_chat,
)

__all__ = ["LlamaCppBackend"]

#: Rows of the score matrix turned into log-probabilities at once (bounds temporary memory).
_ROW_CHUNK = 256


def _topk_from_scores(scores: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Top-``k`` ids and log-probabilities of every row of a ``[n, vocab]`` logit matrix.

    Rows are sorted by decreasing log-probability; ties keep the lower id first.
    """
    n, vocab = scores.shape
    k = min(k, vocab)
    ids_out: list[list[int]] = []
    lps_out: list[list[float]] = []
    for start in range(0, n, _ROW_CHUNK):
        block = np.asarray(scores[start : start + _ROW_CHUNK], dtype=np.float64)
        peak = block.max(axis=1, keepdims=True)
        lse = peak + np.log(np.exp(block - peak).sum(axis=1, keepdims=True))
        if k < vocab:
            idx = np.argpartition(-block, k - 1, axis=1)[:, :k]
        else:
            idx = np.broadcast_to(np.arange(vocab), block.shape).copy()
        vals = np.take_along_axis(block, idx, axis=1)
        # sort by value desc, then id asc, for a deterministic order
        order = np.lexsort((idx, -vals), axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        lps = np.take_along_axis(vals, order, axis=1) - lse
        ids_out.extend(idx.astype(int).tolist())
        lps_out.extend(lps.tolist())
    return ids_out, lps_out


class LlamaCppBackend(Backend):
    """Generation with a GGUF model through ``llama-cpp-python``.

    Args:
        model_path: The ``.gguf`` file. :attr:`model_name` is its stem.
        n_ctx: The context window (prompt + generated tokens) in tokens.
        n_threads: CPU threads; ``None`` lets llama.cpp choose.
        seed: The RNG seed of the sampler (used when :class:`GenerationParams` has none).
        chat_format: A llama-cpp-python chat format name; ``None`` uses the GGUF's template.
        verbose: Let llama.cpp print its logs.

    Raises:
        MissingDependencyError: ``llama-cpp-python`` is not installed.
        ModelNotFoundError: ``model_path`` is not a file.
        BackendError: llama.cpp could not load the file.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int = 0,
        chat_format: str | None = None,
        verbose: bool = False,
    ) -> None:
        require("llama_cpp", "llamacpp")
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(
                f"GGUF model file not found: {path}",
                hint="pass the path of an existing .gguf file",
            )
        self.model_path = path
        self.model_name = path.stem
        self.n_ctx = n_ctx
        self._load_kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": n_ctx,
            "n_threads": n_threads,
            "seed": seed,
            "chat_format": chat_format,
            "verbose": verbose,
        }
        self._lock = threading.Lock()
        self._logits_all = False
        self._llm: Any = self._load(logits_all=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_path={str(self.model_path)!r})"

    def _load(self, *, logits_all: bool) -> Any:
        import llama_cpp

        try:
            return llama_cpp.Llama(**self._load_kwargs, logits_all=logits_all)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendError(
                f"llama.cpp could not load {self.model_path}: {exc}",
                hint="is it a GGUF file that this llama-cpp-python version supports?",
            ) from exc

    def _model(self) -> Any:
        if self._llm is None:
            raise BackendError("the backend is closed", hint="create a new LlamaCppBackend")
        return self._llm

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Completion]:
        """Generate one completion per prompt, sequentially, in order.

        String prompts use ``create_completion``, chat prompts ``create_chat_completion``
        (with the model's chat template). ``temperature == 0`` is greedy. ``min_p`` and the
        repetition penalty are switched off so that sampling matches the other backends.
        Each prompt starts from an empty KV cache, so the same prompt and parameters give
        the same text whatever ran before.
        """
        params = params or GenerationParams()
        prompts = list(prompts)
        chats = [is_chat(p) for p in prompts]
        kwargs: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,  # 0 disables top-k in llama.cpp
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "stop": list(params.stop),
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        out: list[Completion] = []
        with self._lock:
            llm = self._model()
            for prompt, chat in zip(prompts, chats, strict=True):
                # Start every prompt from an empty KV cache: re-using a cached prefix
                # evaluates tokens in different batch shapes, which can flip greedy ties.
                llm.reset()
                try:
                    if chat:
                        resp = llm.create_chat_completion(messages=prompt, **kwargs)
                    else:
                        resp = llm.create_completion(prompt=prompt, **kwargs)
                except ValueError as exc:
                    raise BackendError(
                        f"llama.cpp refused the request: {exc}",
                        hint=f"the prompt plus max_new_tokens must fit n_ctx={self.n_ctx}; "
                        "raise n_ctx or shorten the prompt",
                    ) from exc
                out.append(self._to_completion(resp, chat, params))
        return out

    @staticmethod
    def _to_completion(resp: Any, chat: bool, params: GenerationParams) -> Completion:
        choice = resp["choices"][0]
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        text, cut = apply_stop(text or "", params.stop)
        finish: FinishReason = (
            "length" if choice.get("finish_reason") == "length" and not cut else "stop"
        )
        usage = resp.get("usage") or {}
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def _logits_model(self) -> Any:
        """The model loaded with ``logits_all=True`` (reloaded once, on first use)."""
        llm = self._model()
        if not self._logits_all:
            close = getattr(llm, "close", None)
            self._llm = None
            if callable(close):
                close()
            self._llm = llm = self._load(logits_all=True)
            self._logits_all = True
        if not all(hasattr(llm, name) for name in ("tokenize", "eval", "scores")):
            raise NotImplementedError(
                "this llama-cpp-python version does not expose Llama.tokenize/eval/scores; "
                "top-K log-probabilities are unavailable with LlamaCppBackend"
            )
        return llm

    def topk_logprobs(self, texts: Sequence[str], k: int) -> list[TopKLogprobs]:
        """Top-``k`` next-token log-probabilities at every token of each text.

        The text is tokenized the way the model expects (a BOS token is prepended when the
        GGUF asks for one, and then appears in ``token_ids``); entry ``i`` is the
        distribution over token ``i + 1`` (the last entry predicts the token after the
        text). The first call reloads the model with ``logits_all=True``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        results: list[TopKLogprobs] = []
        with self._lock:
            llm = self._logits_model()
            for text in texts:
                if not isinstance(text, str):
                    raise TypeError(f"topk_logprobs takes strings, got {type(text).__name__}")
                ids = [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=True)]
                if not ids:
                    results.append(TopKLogprobs(token_ids=[]))
                    continue
                if len(ids) > self.n_ctx:
                    raise BackendError(
                        f"the text has {len(ids)} tokens, more than n_ctx={self.n_ctx}",
                        hint="raise n_ctx or split the text",
                    )
                llm.reset()
                llm.eval(ids)
                scores = np.asarray(llm.scores)[: len(ids)]
                topk_ids, topk_lps = _topk_from_scores(scores, k)
                results.append(
                    TopKLogprobs(token_ids=ids, topk_ids=topk_ids, topk_logprobs=topk_lps)
                )
        return results

    def close(self) -> None:
        """Free the model and its context. Safe to call twice."""
        with self._lock:
            llm, self._llm = self._llm, None
        close = getattr(llm, "close", None)
        if callable(close):
            close()
