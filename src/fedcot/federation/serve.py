"""``fedcot serve``: an OpenAI-compatible HTTP server over an in-process backend.

The server LLM of FedCoT runs on one machine; clients elsewhere reach it with the
``openai`` backend (``server.kind = "openai"``) or any OpenAI client. Routes:

- ``POST /v1/completions``: ``prompt`` is a string or a list of strings; ``max_tokens``,
  ``temperature``, ``top_p``, ``top_k``, ``stop``, ``seed``; ``n`` must be 1. ``echo`` with
  ``logprobs=K`` and ``max_tokens`` 0 or 1 returns the prompt's top-K log-probabilities at
  every position (what :meth:`OpenAIBackend.topk_logprobs` asks for), where the backend can
  compute them; the one generated token is the most likely one.
- ``POST /v1/chat/completions``: ``messages`` go through the model's chat template.
- ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /metrics`` (JSON counters);
  ``GET /health`` and ``GET /healthz`` (open even when API keys are set).

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``; bad input
of any kind is a 4xx, never a 5xx. With API keys configured, every route but the health
checks needs ``Authorization: Bearer <key>`` (compared in constant time).

Concurrent requests with the same generation parameters are gathered for up to
``batch_wait_ms`` (or until ``max_batch`` prompts) and sent to the backend as one
``generate`` call in a worker thread (:class:`MicroBatcher`); the event loop stays free.

The audit log (JSONL, one line per request, flushed and fsynced) records what the operator
of this server sees: the time, route, client address, the model, the prompt(s) or messages
exactly as received, the other parameters and the response status. For FedCoT this is the
place to check that only perturbed text arrives.

SIGTERM or SIGINT stops accepting connections, lets the requests in flight finish (the
batcher drains) and exits with status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedcot.config import BackendConfig
from fedcot.errors import BackendError, ConfigError
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

__all__ = [
    "AuditLog",
    "MicroBatcher",
    "ServeConfig",
    "ServeLimits",
    "ServeMetrics",
    "check_port",
    "create_app",
    "make_server",
    "read_api_keys",
    "serve",
]

log = logging.getLogger(__name__)

HEALTH_PATHS: tuple[str, ...] = ("/health", "/healthz")
"""Routes that need no API key and are not written to the audit log."""

_DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens of /v1/completions
_CHARS_PER_TOKEN = 4  # prompt-length estimate for backends without a tokenizer
_LONG_PROMPT_CHARS = 20_000  # longer prompts are tokenised off the event loop

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


class ServeLimits(BaseModel):
    """What one request may ask of the server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(1_048_576, ge=1024, description="request body size (bytes)")
    max_prompt_tokens: int = Field(4096, ge=1, description="tokens of one prompt")
    max_tokens: int = Field(512, ge=1, le=32768, description="cap on max_tokens")
    max_batch: int = Field(16, ge=1, le=512, description="prompts per backend call and per request")
    batch_wait_ms: float = Field(10.0, ge=0.0, le=60_000.0, description="micro-batch window")
    max_logprobs: int = Field(20, ge=1, le=1000, description="cap on logprobs (top-K)")


class ServeConfig(BaseModel):
    """``fedcot serve``: which model to serve, where, and with which limits.

    API keys are not part of the config (they would end up in files): they come from
    ``--api-key`` or the environment variable named by ``api_key_env``.
    """

    model_config = ConfigDict(extra="forbid")

    model: BackendConfig = Field(default_factory=BackendConfig)
    served_model_name: str | None = Field(
        None, description="the name clients send as 'model' (default: model.model)"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0: an OS-assigned free port")
    api_key_env: str = Field(
        "FEDCOT_API_KEYS", description="environment variable with comma-separated keys"
    )
    audit_log: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    limits: ServeLimits = Field(default_factory=ServeLimits)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    graceful_timeout_s: float | None = Field(
        60.0, gt=0, description="how long in-flight requests may take after SIGTERM"
    )

    @model_validator(mode="after")
    def _check(self) -> ServeConfig:
        if self.model.kind == "replay":
            raise ValueError("the replay teacher cannot be served; use a real model")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        if "batch_size" not in self.model.model_fields_set:
            # One backend call holds up to max_batch prompts: run them in one forward pass.
            self.model = self.model.model_copy(update={"batch_size": self.limits.max_batch})
        return self

    @property
    def name(self) -> str:
        """The model name clients use."""
        return self.served_model_name or self.model.model


def read_api_keys(env_var: str, *, required: bool = False) -> set[str]:
    """The comma-separated API keys in ``env_var`` (empty entries are dropped)."""
    raw = os.environ.get(env_var)
    if raw is None or not raw.strip():
        if required:
            raise ConfigError(
                f"the environment variable {env_var} (named by --api-key-env) is not set",
                hint=f"export {env_var}=key1,key2 or pass --api-key KEY",
            )
        return set()
    return {k.strip() for k in raw.split(",") if k.strip()}


# --------------------------------------------------------------------------------------
# Errors and responses
# --------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered with an OpenAI-style JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI writes it."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _json_bytes(content: Any) -> bytes:
    """Compact JSON; text that is not valid Unicode (lone surrogates) is \\u-escaped."""
    try:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


@dataclass
class ServeMetrics:
    """Counters shown at ``GET /metrics``.

    ``requests``: requests received (all routes but the health checks); ``errors``: those
    answered with a 4xx or 5xx; ``batches``: backend calls; ``prompts``: prompts in them;
    ``backend_errors``: backend calls that raised.
    """

    requests: int = 0
    errors: int = 0
    batches: int = 0
    prompts: int = 0
    backend_errors: int = 0
    largest_batch: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "batches": self.batches,
            "prompts": self.prompts,
            "backend_errors": self.backend_errors,
            "largest_batch": self.largest_batch,
            "in_flight": self.in_flight,
            "uptime_s": round(time.time() - self.started, 3),
        }


# --------------------------------------------------------------------------------------
# Audit log
# --------------------------------------------------------------------------------------


class AuditLog:
    """Append-only JSONL: one line per request, flushed and fsynced as it is written.

    A new file is created readable by its owner only (it holds every prompt received).
    Lines are ASCII JSON (non-ASCII text is \\u-escaped), so any text received, even text
    that is not valid Unicode, is recorded exactly.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the audit log {self.path}: {exc}",
                hint="choose a writable --audit-log path",
            ) from exc
        self._file = os.fdopen(fd, "a", encoding="ascii")
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        try:
            line = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
        except (ValueError, RecursionError):
            # Too deeply nested or not serialisable: keep what is sure to serialise.
            record = {k: v for k, v in record.items() if k not in ("prompt", "messages", "params")}
            record["note"] = "body could not be re-serialised; see raw"
            line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str)
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def _audit_record(
    scope: Scope, t0: float, status: int | None, body: bytes | None, note: str | None
) -> dict[str, Any]:
    client = scope.get("client")
    rec: dict[str, Any] = {
        "time": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="milliseconds"),
        "route": scope.get("path", ""),
        "method": scope.get("method", ""),
        "client": f"{client[0]}:{client[1]}" if client else None,
        "status": status,
        "ms": round(1000 * (time.time() - t0), 1),
    }
    if body is None:
        rec["bytes"] = None
    else:
        rec["bytes"] = len(body)
        if body:
            try:
                data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                rec["raw"] = body.decode("utf-8", "backslashreplace")
            else:
                if isinstance(data, dict):
                    rec["model"] = data.get("model")
                    for key in ("prompt", "messages"):
                        if key in data:
                            rec[key] = data[key]
                    rec["params"] = {
                        k: v for k, v in data.items() if k not in ("model", "prompt", "messages")
                    }
                else:
                    rec["body"] = data
    if note:
        rec["note"] = note
    return rec


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# --------------------------------------------------------------------------------------
# Micro-batching
# --------------------------------------------------------------------------------------


class ServerClosingError(Exception):
    """A request arrived while the batcher was draining for shutdown."""


class _Group:
    """Requests waiting to share one backend call."""

    __slots__ = ("key", "launched", "parts", "sealed", "size", "timer")

    def __init__(self, key: tuple[str, Any]) -> None:
        self.key = key
        self.parts: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.launched = False
        self.sealed = False


class MicroBatcher:
    """Gather concurrent requests into few backend calls.

    Requests with equal keys (the same generation parameters, or the same K for top-K
    log-probabilities) join one group. A group is launched ``wait_s`` after its first
    request or when it holds ``max_batch`` prompts; it keeps taking requests while it waits
    for the backend, which runs one call at a time in a worker thread. Each request gets
    its own slice of the results. If a shared call fails, each request of the group is
    retried alone, so one bad request cannot fail the others.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int,
        wait_s: float,
        metrics: ServeMetrics | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.backend = backend
        self.max_batch = max_batch
        self.wait_s = max(0.0, float(wait_s))
        self.metrics = metrics or ServeMetrics()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: dict[tuple[str, Any], _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock: asyncio.Lock | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    # -- public ----------------------------------------------------------------------------
    async def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams
    ) -> list[Completion]:
        """Completions of ``prompts``, computed in a shared backend call."""
        return await self._submit(("generate", params), list(prompts))

    async def topk_logprobs(self, texts: Sequence[str], k: int) -> list[TopKLogprobs]:
        """Top-``k`` log-probabilities of ``texts``, computed in a shared backend call."""
        return await self._submit(("topk", k), list(texts))

    @property
    def closing(self) -> bool:
        return self._closing

    def reopen(self) -> None:
        """Accept requests again (after :meth:`drain`)."""
        self._closing = False

    async def drain(self) -> None:
        """Refuse new requests, launch the waiting groups and wait for every call to end."""
        self._closing = True
        if self._loop is not asyncio.get_running_loop():
            return
        for group in list(self._open.values()):
            self._seal(group)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        """Stop the worker thread (a later request starts a new one)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # -- internals -------------------------------------------------------------------------
    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run one per client)
            self._loop = loop
            self._open = {}
            self._tasks = set()
            self._lock = asyncio.Lock()
        return loop

    async def _submit(self, key: tuple[str, Any], items: list[Any]) -> list[Any]:
        if self._closing:
            raise ServerClosingError
        if not items:
            return []
        loop = self._bind()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        group = self._open.get(key)
        if group is not None and group.size + len(items) > self.max_batch:
            self._seal(group)
            group = None
        if group is None:
            group = _Group(key)
            self._open[key] = group
            group.timer = loop.call_later(self.wait_s, self._launch, group)
        group.parts.append((items, fut))
        group.size += len(items)
        if group.size >= self.max_batch:
            self._seal(group)
        return await fut

    def _seal(self, group: _Group) -> None:
        """No more requests join ``group``; launch it."""
        if not group.sealed:
            group.sealed = True
            if self._open.get(group.key) is group:
                del self._open[group.key]
            if group.timer is not None:
                group.timer.cancel()
        self._launch(group)

    def _launch(self, group: _Group) -> None:
        if group.launched or self._loop is None:
            return
        group.launched = True
        task = self._loop.create_task(self._run(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group: _Group) -> None:
        assert self._lock is not None
        async with self._lock:
            self._seal(group)
            parts = [(items, fut) for items, fut in group.parts if not fut.done()]
            if not parts:
                return
            try:
                results = await self._call(group.key, [x for items, _ in parts for x in items])
            except asyncio.CancelledError:
                for _, fut in parts:
                    fut.cancel()
                raise
            except Exception as exc:
                if len(parts) == 1:
                    _settle(parts[0][1], exc=exc)
                    return
                for items, fut in parts:  # alone, so that only the culprit fails
                    if fut.done():
                        continue
                    try:
                        one = await self._call(group.key, items)
                    except asyncio.CancelledError:
                        fut.cancel()
                        raise
                    except Exception as exc1:
                        _settle(fut, exc=exc1)
                    else:
                        _settle(fut, result=one)
                return
            offset = 0
            for items, fut in parts:
                _settle(fut, result=results[offset : offset + len(items)])
                offset += len(items)

    async def _call(self, key: tuple[str, Any], items: list[Any]) -> list[Any]:
        kind, arg = key
        if kind == "generate":
            fn = partial(self.backend.generate, items, arg)
        else:
            fn = partial(self.backend.topk_logprobs, items, arg)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedcot-serve")
        m = self.metrics
        m.batches += 1
        m.prompts += len(items)
        m.largest_batch = max(m.largest_batch, len(items))
        assert self._loop is not None
        try:
            out = list(await self._loop.run_in_executor(self._executor, fn))
        except Exception:
            m.backend_errors += 1
            raise
        if len(out) != len(items):
            m.backend_errors += 1
            raise BackendError(f"the backend returned {len(out)} results for {len(items)} inputs")
        return out


def _settle(
    fut: asyncio.Future[list[Any]],
    *,
    result: list[Any] | None = None,
    exc: BaseException | None = None,
) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result or [])


# --------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800")
        return False
    return True


def _check_text(text: str, what: str) -> str:
    if not _valid_unicode(text):
        raise ValueError(f"{what} holds text that is not valid Unicode (a lone surrogate)")
    return text


class _Body(BaseModel):
    """Fields shared by both POST routes. Unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=1_000_000)
    stop: Any = ()
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None

    @field_validator("model")
    @classmethod
    def _model_text(cls, v: str | None) -> str | None:
        return v if v is None else _check_text(v, "the model name")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> tuple[str, ...]:
        if v is None:
            return ()
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValueError("must be a string or a list of strings")
        if len(items) > 16:
            raise ValueError(f"at most 16 stop strings (got {len(items)})")
        for s in items:
            if s == "":
                raise ValueError("stop strings must not be empty")
            _check_text(s, "a stop string")
        return tuple(items)


class _CompletionBody(_Body):
    prompt: Any
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> list[str]:
        if isinstance(v, str):
            items = [v]
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            items = v
        elif isinstance(v, list) and all(
            isinstance(x, (int, list)) and not isinstance(x, bool) for x in v
        ):
            raise ValueError("token-id prompts are not supported: send the prompt as text")
        else:
            raise ValueError("must be a string or a list of strings")
        if not items:
            raise ValueError("must not be empty (an empty list)")
        for i, s in enumerate(items):
            if not s:
                raise ValueError("must not be empty" if len(items) == 1 else f"prompt {i} is empty")
            _check_text(s, "the prompt")
        return items


class _ChatBody(_Body):
    messages: Any
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: Any = None

    @field_validator("messages")
    @classmethod
    def _messages(cls, v: Any) -> list[ChatMessage]:
        if not isinstance(v, list) or not v:
            raise ValueError("must be a non-empty list of {'role', 'content'} messages")
        out: list[ChatMessage] = []
        for i, m in enumerate(v):
            if not isinstance(m, dict):
                raise ValueError(f"message {i} must be an object with 'role' and 'content'")
            role = m.get("role")
            if role == "developer":
                role = "system"
            if role not in ("system", "user", "assistant"):
                raise ValueError(
                    f"message {i}: role must be 'system', 'user' or 'assistant' (got "
                    f"{str(role)[:40]!r})"
                )
            content = m.get("content")
            if isinstance(content, list):
                texts = []
                for part in content:
                    if (
                        not isinstance(part, dict)
                        or part.get("type") != "text"
                        or not isinstance(part.get("text"), str)
                    ):
                        raise ValueError(
                            f"message {i}: only text content parts are supported "
                            "({'type': 'text', 'text': ...})"
                        )
                    texts.append(part["text"])
                content = "".join(texts)
            elif not isinstance(content, str):
                raise ValueError(f"message {i}: content must be a string")
            out.append({"role": role, "content": _check_text(content, f"message {i}")})
        if not any(m["content"] for m in out):
            raise ValueError("every message is empty")
        return out


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    parts: list[str] = []
    param: str | None = None
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        param = param or loc
        msg = str(err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "missing":
            msg = "this field is required"
        parts.append(f"{loc}: {msg}")
    return "invalid request: " + "; ".join(parts), param


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(
            400, f"the request body is not valid UTF-8 (byte {exc.start})", code="invalid_json"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise APIError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise APIError(422, f"the request body must be a JSON object, not {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------


class _Service:
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

    def params(self, body: _Body, max_tokens: int) -> GenerationParams:
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
            message, param = _validation_message(exc)
            raise APIError(422, message, code="invalid_value", param=param) from None

    @staticmethod
    def common_checks(body: _Body) -> None:
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
        body: _CompletionBody = self.validate(_CompletionBody, _parse_body(raw))
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
        body: _ChatBody = self.validate(_ChatBody, _parse_body(raw))
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
                v = _finite(lp)
                if v is not None and s not in d:  # distinct ids may decode alike
                    d[s] = v
            return d

        def actual(row: list[tuple[int, str, float]], tid: int, s: str) -> float | None:
            for i, cs, lp in row:
                if (tid >= 0 and i == tid) or (tid < 0 and cs == s):
                    return _finite(lp)
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
            token_lps.append(_finite(lp))
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
        return {"object": "list", "data": [self._model_card()]}

    def _model_card(self) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------
# ASGI: body limit + audit + counters, around the FastAPI app
# --------------------------------------------------------------------------------------


class _Guard:
    """Reads the whole body first (at most ``max_body_bytes``, chunked bodies too), answers
    413 when it is larger, then replays it to the app; counts and audits every request.

    The audit line is written before the last byte of the response is sent, so a client
    holding its answer knows the line is on disk.
    """

    def __init__(self, app: ASGIApp, service: _Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        svc = self.service
        audited = scope.get("path", "") not in HEALTH_PATHS
        t0 = time.time()
        status: int | None = None
        body: bytes | None = None
        note: str | None = None
        finished = False

        def finish() -> None:
            nonlocal finished
            if finished or not audited:
                return
            finished = True
            svc.metrics.in_flight -= 1
            if status is None or status >= 400:
                svc.metrics.errors += 1
            if svc.audit is not None:
                try:
                    svc.audit.write(_audit_record(scope, t0, status, body, note))
                except Exception:  # the audit must never break a response
                    log.exception("could not write the audit log")

        if audited:
            svc.metrics.requests += 1
            svc.metrics.in_flight += 1
        try:
            limit = svc.limits.max_body_bytes
            declared = _content_length(scope)
            too_big = declared is not None and declared > limit
            disconnected = False
            if not too_big:
                chunks: list[bytes] = []
                size = 0
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        disconnected = True
                        break
                    if msg["type"] != "http.request":
                        continue
                    chunk = msg.get("body", b"") or b""
                    size += len(chunk)
                    if size > limit:
                        too_big = True
                        break
                    chunks.append(chunk)
                    if not msg.get("more_body", False):
                        break
                if not too_big:
                    body = b"".join(chunks)
            if too_big:
                status = 413
                note = f"body over the limit of {limit} bytes: not read"
                finish()
                await _send_json(
                    send,
                    413,
                    error_body(
                        413,
                        f"the request body is larger than this server's limit of {limit} bytes",
                        code="request_too_large",
                    ),
                    close=True,
                )
                return
            if disconnected:
                status = 499
                note = "client disconnected before sending the whole body"
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            async def send_and_audit(msg: Message) -> None:
                nonlocal status
                if msg["type"] == "http.response.start":
                    status = int(msg["status"])
                elif msg["type"] == "http.response.body" and not msg.get("more_body", False):
                    finish()
                await send(msg)

            await self.app(scope, replay, send_and_audit)
        except BaseException:
            if status is None:
                status = 500
            raise
        finally:
            finish()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status: int, content: Any, *, close: bool = False) -> None:
    data = _json_bytes(content)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


# --------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------


class _JSON(JSONResponse):
    """JSON that is always valid UTF-8 (see :func:`_json_bytes`)."""

    def render(self, content: Any) -> bytes:
        return _json_bytes(content)


def create_app(
    backend: Backend,
    *,
    model_name: str,
    api_keys: set[str] | None = None,
    limits: ServeLimits | None = None,
    audit_log: Path | None = None,
) -> FastAPI:
    """The FastAPI app serving ``backend`` as ``model_name`` (see the module docstring).

    ``app.state.fedcot`` holds the service (``metrics``, ``batcher``, ``close()``).
    """
    service = _Service(
        backend,
        model_name=model_name,
        api_keys=api_keys,
        limits=limits or ServeLimits(),
        audit_log=audit_log,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        service.batcher.reopen()
        try:
            yield
        finally:
            await service.batcher.drain()
            service.batcher.close()

    app = FastAPI(
        title="fedcot serve",
        description="An OpenAI-compatible API over a fedcot backend.",
        default_response_class=_JSON,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.fedcot = service

    def error_response(exc: APIError) -> JSONResponse:
        return _JSON(
            error_body(exc.status, exc.message, exc.code, exc.param),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return _JSON(
            error_body(exc.status_code, message),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in list(exc.errors())[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _JSON(
            error_body(422, "invalid request: " + "; ".join(parts), "invalid_value"),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _JSON(
            error_body(500, f"internal error: {type(exc).__name__}", "internal_error"),
            status_code=500,
        )

    async def require_key(request: Request) -> None:
        service.check_key(request.headers.get("authorization"))

    api = APIRouter(dependencies=[Depends(require_key)])

    @api.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await service.completions(await request.body())

    @api.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await service.chat(await request.body())

    @api.get("/v1/models")
    async def list_models() -> Any:
        return service.models()

    @api.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Any:
        service.check_model(model_id)
        return service._model_card()

    @api.get("/metrics")
    async def metrics() -> Any:
        return {"model": service.model_name, **service.metrics.snapshot()}

    app.include_router(api)

    async def health() -> Any:
        if service.batcher.closing:
            return _JSON({"status": "shutting down", "model": model_name}, status_code=503)
        return {"status": "ok", "model": model_name}

    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/healthz", health, methods=["GET"])
    app.add_middleware(_Guard, service=service)
    return app


# --------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------


def _uvicorn_server_class() -> type:
    import uvicorn

    class FedcotServer(uvicorn.Server):
        """uvicorn's server, announcing its URL once listening; a signal ends it with 0."""

        announce: Callable[[str], None] | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the caught signal after a graceful shutdown, which would end
            # the process with -SIGTERM or KeyboardInterrupt; after a clean drain we exit 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in originals.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self.announce is not None:
                self.announce(self.url)

        @property
        def port(self) -> int:
            return int(self.servers[0].sockets[0].getsockname()[1])

        @property
        def url(self) -> str:
            host = self.config.host
            if ":" in host:
                host = f"[{host}]"
            scheme = "https" if self.config.is_ssl else "http"
            return f"{scheme}://{host}:{self.port}/v1"

    return FedcotServer


def make_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ssl_certfile: str | Path | None = None,
    ssl_keyfile: str | Path | None = None,
    log_level: str = "info",
    graceful_timeout_s: float | None = 60.0,
    announce: Callable[[str], None] | None = None,
) -> Any:
    """A uvicorn server for ``app``; call ``.run()`` (blocks) or set ``.should_exit``.

    ``announce(url)`` is called once the socket listens (``port=0`` picks a free port).
    """
    import uvicorn

    for path in (ssl_certfile, ssl_keyfile):
        if path is not None and not Path(path).is_file():
            raise ConfigError(
                f"TLS file not found: {path}", hint="check --ssl-certfile and --ssl-keyfile"
            )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
        ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        log_level=log_level,
        timeout_graceful_shutdown=graceful_timeout_s,
        lifespan="on",
        server_header=False,
        # The audit log records the TCP peer; X-Forwarded-For is not trusted (it could be
        # set by any local client).
        proxy_headers=False,
        ws="none",  # no WebSocket routes; do not load a WebSocket library
    )
    server = _uvicorn_server_class()(config)
    server.announce = announce
    return server


def check_port(host: str, port: int) -> None:
    """A friendly error when the address is taken (uvicorn would exit with status 3)."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc}", hint="check --host") from None
    family, socktype, proto, _, addr = infos[0]
    with socket.socket(family, socktype, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="choose another --port (0 picks a free one) or stop the other server",
            ) from None


def serve(
    backend: Backend,
    *,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_keys: set[str] | None = None,
    limits: ServeLimits | None = None,
    audit_log: Path | None = None,
    ssl_certfile: str | Path | None = None,
    ssl_keyfile: str | Path | None = None,
    log_level: str = "info",
    graceful_timeout_s: float | None = 60.0,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve ``backend`` until SIGTERM/SIGINT, then drain and return.

    ``announce(url)`` is told the API URL once the server listens; by default a line
    ``fedcot serve: MODEL at URL`` is printed to stdout.
    """
    check_port(host, port)
    app = create_app(
        backend, model_name=model_name, api_keys=api_keys, limits=limits, audit_log=audit_log
    )

    def _print(url: str) -> None:
        print(f"fedcot serve: {model_name} at {url}", flush=True)

    server = make_server(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        log_level=log_level,
        graceful_timeout_s=graceful_timeout_s,
        announce=announce or _print,
    )
    try:
        server.run()
    finally:
        app.state.fedcot.close()
