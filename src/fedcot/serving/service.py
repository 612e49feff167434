"""What ``fedcot serve`` does with a request once its body is read: checks, batching,
the OpenAI-shaped answers."""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fedcot.models.backends.base import (
    GREEDY_BELOW,
    Backend,
    ChatMessage,
    Completion,
    GenerationParams,
    Prompt,
    TopKLogprobs,
    render_prompt,
)
from fedcot.serving.audit import AuditLog
from fedcot.serving.batcher import MicroBatcher, ServerClosingError
from fedcot.serving.config import ServeLimits
from fedcot.serving.metrics import ServeMetrics
from fedcot.serving.schemas import (
    APIError,
    Body,
    ChatBody,
    CompletionBody,
    finite,
    parse_body,
    validation_message,
)

__all__ = ["Service"]

log = logging.getLogger(__name__)

_DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens of /v1/completions
_CHARS_PER_TOKEN = 4  # prompt-length estimate for backends without a tokenizer
_LONG_PROMPT_CHARS = 20_000  # longer prompts are tokenised off the event loop


class Service:
    """Everything a request needs: backend, limits, batcher, counters, audit log."""

    def __init__(
        self,
        backend: Backend,
        *,
        model_name: str,
        api_keys: set[str] | None,
        limits: ServeLimits,
        audit_log: Path | None,
    ) -> None:
        self.backend = backend
        self.model_name = model_name
        self.limits = limits
        self.metrics = ServeMetrics()
        self.batcher = MicroBatcher(
            backend,
            max_batch=limits.max_batch,
            wait_s=limits.batch_wait_ms / 1000.0,
            metrics=self.metrics,
        )
        self._keys = [k.encode("utf-8") for k in sorted(api_keys or ()) if k]
        self.audit = AuditLog(audit_log) if audit_log is not None else None
        self.tokenizer = getattr(backend, "tokenizer", None)
        self.can_topk = type(backend).topk_logprobs is not Backend.topk_logprobs
        self._decoded: dict[int, str] = {}

    @property
    def auth_enabled(self) -> bool:
        return bool(self._keys)

    def close(self) -> None:
        self.batcher.close()
        if self.audit is not None:
            self.audit.close()

    # -- checks ----------------------------------------------------------------------------
    def check_key(self, header: str | None) -> None:
        if not self._keys:
            return
        bearer = {"WWW-Authenticate": "Bearer"}
        if not header:
            raise APIError(
                401,
                "no API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers=bearer,
            )
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401,
                "malformed Authorization header: expected 'Bearer <key>'",
                code="invalid_api_key",
                headers=bearer,
            )
        given = token.encode("latin-1", "replace")  # headers arrive as latin-1
        ok = False
        for key in self._keys:  # no early exit: the time does not depend on which key
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise APIError(401, "incorrect API key", code="invalid_api_key", headers=bearer)

    def check_model(self, model: str | None) -> None:
        if model is None or model == self.model_name:
            return
        raise APIError(
            404,
            f"the model {model[:200]!r} is not served here; this server serves {[self.model_name]}",
            code="model_not_found",
            param="model",
        )

    def check_max_tokens(self, value: int) -> None:
        if value > self.limits.max_tokens:
            raise APIError(
                422,
                f"max_tokens = {value} is over this server's limit of {self.limits.max_tokens}",
                code="max_tokens_exceeded",
                param="max_tokens",
            )

    def check_echo_logprobs(self, echo: bool, k: int, max_tokens: int) -> None:
        """``logprobs=K`` only with ``echo`` (the prompt's top-K) and ``max_tokens`` 0 or 1;
        ``max_tokens`` 0 only with ``echo``."""
        if k:
            if not echo:
                raise APIError(
                    422,
                    "logprobs of generated tokens are not supported; for the prompt's top-K "
                    "log-probabilities send echo=true with max_tokens 0 or 1",
                    param="logprobs",
                )
            if not self.can_topk:
                raise APIError(
                    422,
                    f"the backend of {self.model_name} cannot compute log-probabilities",
                    param="logprobs",
                )
            if k > self.limits.max_logprobs:
                raise APIError(
                    422,
                    f"logprobs = {k} is over this server's limit of {self.limits.max_logprobs}",
                    param="logprobs",
                )
            if max_tokens > 1:
                raise APIError(
                    422,
                    "with echo and logprobs, max_tokens must be 0 or 1 (the prompt is scored "
                    "and the single most likely next token appended)",
                    param="max_tokens",
                )
        elif max_tokens == 0 and not echo:
            raise APIError(
                422, "max_tokens must be >= 1 (0 only with echo=true)", param="max_tokens"
            )

    def count_tokens(self, prompt: Prompt, index: int | None = None) -> int:
        """Tokens of ``prompt`` as the model sees it; 422 when over the limit."""
        tok = self.tokenizer
        try:
            if tok is not None:
                text, special = render_prompt(tok, prompt)
                n = len(tok(text, add_special_tokens=special)["input_ids"])
            else:
                text = (
                    prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
                )
                n = max(1, math.ceil(len(text) / _CHARS_PER_TOKEN))
        except Exception as exc:  # a chat template may raise anything on odd input
            raise APIError(
                422,
                f"the model cannot render these messages: {type(exc).__name__}: {exc}"[:500],
                code="invalid_prompt",
                param="messages",
            ) from None
        limit = self.limits.max_prompt_tokens
        if n > limit:
            which = "the prompt" if index is None else f"prompt {index}"
            raise APIError(
                422,
                f"{which} has {n} tokens; this server accepts at most {limit} prompt tokens",
                code="context_length_exceeded",
                param="messages" if not isinstance(prompt, str) else "prompt",
            )
        return n

    async def count_all(self, prompts: Sequence[Prompt]) -> list[int]:
        """:meth:`count_tokens` of each prompt; long texts are tokenised in a thread so
        that the event loop stays free."""

        def count() -> list[int]:
            many = len(prompts) > 1
            return [self.count_tokens(p, i if many else None) for i, p in enumerate(prompts)]

        chars = sum(
            len(p) if isinstance(p, str) else sum(len(m["content"]) for m in p) for p in prompts
        )
        if chars > _LONG_PROMPT_CHARS:
            return await asyncio.to_thread(count)
        return count()

    def params(self, body: Body, max_tokens: int) -> GenerationParams:
        temperature = 1.0 if body.temperature is None else body.temperature
        if temperature < GREEDY_BELOW:
            temperature = 0.0  # dividing logits by ~0 overflows to inf/NaN: decode greedily
        return GenerationParams(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(body.top_k or 0, 0),
            stop=body.stop,
            seed=body.seed,
        )

    @staticmethod
    def validate(cls: type[BaseModel], data: dict[str, Any]) -> Any:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            message, param = validation_message(exc)
            raise APIError(422, message, code="invalid_value", param=param) from None

    @staticmethod
    def common_checks(body: Body) -> None:
        if body.n not in (None, 1):
            raise APIError(422, "n must be 1: this server returns one choice", param="n")
        if body.stream:
            raise APIError(422, "streaming is not supported by fedcot serve", param="stream")

    async def run(self, coro: Awaitable[list[Any]]) -> list[Any]:
        try:
            return await coro
        except ServerClosingError:
            raise APIError(503, "the server is shutting down", code="shutting_down") from None
        except APIError:
            raise
        except Exception as exc:
            log.exception("backend call failed")
            raise APIError(
                500, f"the model failed: {type(exc).__name__}: {exc}"[:500], code="backend_error"
            ) from None

    def decode(self, token_id: int) -> str:
        s = self._decoded.get(token_id)
        if s is None:
            if self.tokenizer is None or token_id < 0:
                s = str(token_id)
            else:
                s = self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            if len(self._decoded) < 1_000_000:
                self._decoded[token_id] = s
        return s

    # -- routes ----------------------------------------------------------------------------
    async def completions(self, raw: bytes) -> dict[str, Any]:
        body: CompletionBody = self.validate(CompletionBody, parse_body(raw))
        self.check_model(body.model)
        self.common_checks(body)
        if body.best_of not in (None, 1):
            raise APIError(422, "best_of must be 1", param="best_of")
        if body.suffix:
            raise APIError(422, "suffix is not supported by fedcot serve", param="suffix")
        prompts: list[str] = body.prompt
        if len(prompts) > self.limits.max_batch:
            raise APIError(
                422,
                f"the request holds {len(prompts)} prompts; this server takes at most "
                f"{self.limits.max_batch} per request",
                code="too_many_prompts",
                param="prompt",
            )
        max_tokens = (
            min(_DEFAULT_COMPLETION_TOKENS, self.limits.max_tokens)
            if body.max_tokens is None
            else body.max_tokens
        )
        self.check_max_tokens(max_tokens)
        echo = bool(body.echo)
        k = body.logprobs or 0
        self.check_echo_logprobs(echo, k, max_tokens)
        counts = await self.count_all(prompts)
        created = int(time.time())
        choices: list[dict[str, Any]] = []
        n_prompt = n_completion = 0
        if k:
            results = await self.run(self.batcher.topk_logprobs(prompts, k))
            for i, (p, res) in enumerate(zip(prompts, results)):
                choice, np_, nc = self._echo_choice(i, p, res, k, max_tokens)
                choices.append(choice)
                n_prompt += np_
                n_completion += nc
        elif max_tokens == 0:
            for i, p in enumerate(prompts):
                choices.append({"index": i, "text": p, "logprobs": None, "finish_reason": "length"})
            n_prompt = sum(counts)
        else:
            params = self.params(body, max_tokens)
            comps: list[Completion] = await self.run(self.batcher.generate(prompts, params))
            for i, (p, c) in enumerate(zip(prompts, comps)):
                choices.append(
                    {
                        "index": i,
                        "text": p + c.text if echo else c.text,
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                )
                n_prompt += c.prompt_tokens or counts[i]
                n_completion += c.completion_tokens
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": created,
            "model": self.model_name,
            "choices": choices,
            "usage": _usage(n_prompt, n_completion),
        }

    async def chat(self, raw: bytes) -> dict[str, Any]:
        body: ChatBody = self.validate(ChatBody, parse_body(raw))
        self.check_model(body.model)
        self.common_checks(body)
        if body.logprobs:
            raise APIError(
                422, "logprobs are not supported on /v1/chat/completions", param="logprobs"
            )
        if body.tools:
            raise APIError(422, "tools are not supported by fedcot serve", param="tools")
        if not self.backend.supports_chat:
            raise APIError(
                422,
                f"the model {self.model_name} has no chat template: send a text prompt to "
                "/v1/completions instead",
                code="chat_not_supported",
                param="messages",
            )
        if body.max_completion_tokens is not None:
            max_tokens = body.max_completion_tokens
        elif body.max_tokens is not None:
            max_tokens = body.max_tokens
        else:
            max_tokens = self.limits.max_tokens
        if max_tokens < 1:
            raise APIError(422, "max_tokens must be >= 1", param="max_tokens")
        self.check_max_tokens(max_tokens)
        messages: list[ChatMessage] = body.messages
        (count,) = await self.count_all([messages])
        created = int(time.time())
        params = self.params(body, max_tokens)
        (c,) = await self.run(self.batcher.generate([messages], params))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": created,
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
            ],
            "usage": _usage(c.prompt_tokens or count, c.completion_tokens),
        }

    def _echo_choice(
        self, index: int, prompt: str, res: TopKLogprobs, k: int, max_tokens: int
    ) -> tuple[dict[str, Any], int, int]:
        """A legacy ``logprobs`` block: entry j is the distribution that produced token j."""
        names = getattr(res, "tokens", None)
        tokens = list(names) if names is not None else [self.decode(t) for t in res.token_ids]
        cand_names = getattr(res, "topk_tokens", None)
        rows: list[list[tuple[int, str, float]]] = []
        for j, lps in enumerate(res.topk_logprobs):
            ids = res.topk_ids[j] if j < len(res.topk_ids) else [-1] * len(lps)
            strs = cand_names[j] if cand_names is not None else [self.decode(t) for t in ids]
            rows.append(list(zip(ids, strs, lps))[:k])
        n = len(tokens)

        def dist(row: list[tuple[int, str, float]]) -> dict[str, float]:
            d: dict[str, float] = {}
            for _, s, lp in row:
                v = finite(lp)
                if v is not None and s not in d:  # distinct ids may decode alike
                    d[s] = v
            return d

        def actual(row: list[tuple[int, str, float]], tid: int, s: str) -> float | None:
            for i, cs, lp in row:
                if (tid >= 0 and i == tid) or (tid < 0 and cs == s):
                    return finite(lp)
            return None

        top: list[dict[str, float] | None] = [None] if n else []
        token_lps: list[float | None] = [None] if n else []
        for j in range(1, n):
            row = rows[j - 1] if j - 1 < len(rows) else []
            tid = res.token_ids[j] if j < len(res.token_ids) else -1
            top.append(dist(row))
            token_lps.append(actual(row, tid, tokens[j]))
        text = prompt
        n_gen = 0
        if max_tokens >= 1 and n and len(rows) >= n and rows[n - 1]:
            _, s, lp = rows[n - 1][0]
            tokens.append(s)
            top.append(dist(rows[n - 1]))
            token_lps.append(finite(lp))
            text += s
            n_gen = 1
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        block = {
            "tokens": tokens,
            "token_logprobs": token_lps,
            "top_logprobs": top,
            "text_offset": offsets,
        }
        choice = {"index": index, "text": text, "logprobs": block, "finish_reason": "length"}
        return choice, n, n_gen

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_name,
            "object": "model",
            "created": int(self.metrics.started),
            "owned_by": "fedcot",
        }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
