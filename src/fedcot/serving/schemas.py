"""The wire format of ``fedcot serve``: request bodies, OpenAI-style errors, JSON bytes.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``; bad input
of any kind is a 4xx, never a 5xx.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedcot.models.backends.base import ChatMessage

__all__ = [
    "APIError",
    "Body",
    "ChatBody",
    "CompletionBody",
    "error_body",
    "finite",
    "json_bytes",
    "parse_body",
    "reject_constant",
    "validation_message",
]


# --------------------------------------------------------------------------------------
# Errors and JSON
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


def json_bytes(content: Any) -> bytes:
    """Compact JSON; text that is not valid Unicode (lone surrogates) is \\u-escaped."""
    try:
        return json.dumps(
            content, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


def finite(x: float) -> float | None:
    """``x`` as a float, or None when it is NaN or infinite (JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


def reject_constant(name: str) -> Any:
    """``parse_constant`` of :func:`json.loads`: ``NaN`` and ``Infinity`` are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


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


class Body(BaseModel):
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


class CompletionBody(Body):
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


class ChatBody(Body):
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


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
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


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(
            400, f"the request body is not valid UTF-8 (byte {exc.start})", code="invalid_json"
        ) from None
    try:
        data = json.loads(text, parse_constant=reject_constant)
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:
        raise APIError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise APIError(422, f"the request body must be a JSON object, not {type(data).__name__}")
    return data
