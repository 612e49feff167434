"""A backend for any OpenAI-compatible HTTP server (vLLM, llama.cpp server, Ollama, hosted APIs).

Every prompt becomes one HTTP request: chat prompts go to ``{base_url}/chat/completions``,
string prompts to ``{base_url}/completions``. Requests run concurrently on a thread pool that
shares one :class:`httpx.Client`, bounded by ``max_concurrency``; the results come back in the
order of the prompts.

Transient failures (HTTP 429/500/502/503/504, connection errors, timeouts, a response body
that is not JSON) are retried with exponential backoff and full jitter, honouring a
``Retry-After`` header. Any other HTTP error fails at once with a :class:`BackendError` that
carries the server's message and a hint.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from fedcot.errors import BackendError, ConfigError
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

__all__ = ["RETRY_STATUS", "OpenAIBackend", "TextTopKLogprobs"]

log = logging.getLogger(__name__)

RETRY_STATUS: frozenset[int] = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses that are retried; every other error status fails at once."""

#: The most stop strings sent to the server (OpenAI's own API rejects more than four);
#: all of them are applied client-side anyway.
_MAX_SERVER_STOP = 4

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass
class TextTopKLogprobs(TopKLogprobs):
    """:class:`TopKLogprobs` for servers that report token *strings*, not token ids.

    ``token_ids`` and ``topk_ids`` hold ``-1`` placeholders of the right shape; the tokens
    themselves are in ``tokens`` (the i-th token of the text) and ``topk_tokens`` (the
    candidates matching ``topk_logprobs``). Positions follow :class:`TopKLogprobs`: entry
    ``i`` is the distribution that predicts token ``i + 1`` (the last entry predicts the
    token after the text). Candidate lists are sorted by decreasing log-probability.
    """

    tokens: list[str] = field(default_factory=list)
    topk_tokens: list[list[str]] = field(default_factory=list)


class _Aborted(Exception):
    """Raised inside a worker when a sibling request already failed for good."""


def _normalise_base_url(base_url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1/`` -> ``.../v1``.

    A URL with another path (``https://host/api/openai/v1``, ``https://host/custom``) is kept
    as given, minus a trailing slash.
    """
    url = base_url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"invalid base_url {base_url!r}",
            hint="use a full URL such as 'http://127.0.0.1:8000/v1'",
        )
    path = parts.path.rstrip("/")
    if path == "":
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _server_message(resp: httpx.Response) -> str:
    """The error message a server put in its response body (OpenAI, vLLM, FastAPI shapes)."""
    try:
        data = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:500] if text else (resp.reason_phrase or "no message")
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str) and err:
            return err[:500]
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key])[:500]
    return str(data)[:500]


def _as_int(value: object) -> int:
    """A token count from a usage block, 0 where it is missing or not a number."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer():
        return max(int(value), 0)
    return 0


class OpenAIBackend(Backend):
    """Generation through an OpenAI-compatible HTTP API.

    Args:
        base_url: The server's API root, e.g. ``http://127.0.0.1:8000/v1``; a bare
            ``http://host:port`` gets ``/v1`` appended.
        model: The model name sent with every request (also :attr:`model_name`).
        api_key: The API key; when ``None`` it is read from the environment variable
            ``api_key_env``. Without a key no ``Authorization`` header is sent (fine for
            local servers). The key is never logged nor put in error messages.
        api_key_env: The environment variable that holds the key.
        max_concurrency: The most requests in flight at once.
        timeout: Seconds allowed for connecting, for each read and write of every request.
        max_retries: Retries after the first attempt of a request (so at most
            ``max_retries + 1`` attempts).
        backoff_base: The first backoff in seconds; it doubles with every retry and the
            actual sleep is drawn uniformly from ``[0, backoff]`` (full jitter).
        backoff_max: The cap on any one sleep, ``Retry-After`` included.
        chat: Whether the server has ``/chat/completions``; with ``False`` chat prompts are
            refused.
        headers: Extra HTTP headers sent with every request.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 20.0,
        chat: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not model:
            raise ConfigError("OpenAIBackend needs a model name", hint="set model='...'")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_base < 0 or backoff_max < 0:
            raise ConfigError("backoff_base and backoff_max must be >= 0")

        self.base_url = _normalise_base_url(base_url)
        self.model = model
        self.model_name = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self._chat = chat

        key = api_key if api_key is not None else os.environ.get(api_key_env)
        self._has_key = bool(key)
        all_headers = {"Accept": "application/json", **(headers or {})}
        if key:
            all_headers["Authorization"] = f"Bearer {key}"
        self._client: httpx.Client | None = httpx.Client(
            headers=all_headers,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r})"

    @property
    def supports_chat(self) -> bool:
        """Whether chat prompts are accepted (the ``chat`` constructor argument)."""
        return self._chat

    # ------------------------------------------------------------------ public API

    def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams | None = None
    ) -> list[Completion]:
        """Generate one completion per prompt, concurrently, returned in input order.

        Stop strings are sent to the server (at most four) and all of them are applied to
        the returned text again, for servers that ignore them. When a stop string cuts the
        text client-side, ``finish_reason`` is ``"stop"`` and ``completion_tokens`` is still
        the server's count. Missing usage counts are reported as 0.
        """
        params = params or GenerationParams()
        prompts = list(prompts)
        chats = [is_chat(p) for p in prompts]  # validates every prompt before any request
        if any(chats) and not self._chat:
            raise BackendError(
                "chat prompts are not supported by this backend (chat=False)",
                hint="pass string prompts, or construct OpenAIBackend with chat=True",
            )
        items = list(zip(prompts, chats, strict=True))
        return self._map(
            lambda item, abort: self._generate_one(item[0], item[1], params, abort), items
        )

    def topk_logprobs(self, texts: Sequence[str], k: int) -> list[TextTopKLogprobs]:
        """Top-``k`` next-token log-probabilities at every position of each text.

        Uses the legacy ``/completions`` endpoint with ``echo=True``, ``logprobs=k`` and
        ``max_tokens=1`` (the generated token is dropped; its distribution gives the last
        entry). Servers report at position ``i`` the distribution that *produced* token
        ``i``; this is shifted by one so that entry ``i`` predicts token ``i + 1``, as
        :class:`TopKLogprobs` specifies. The result holds token strings, not ids: see
        :class:`TextTopKLogprobs`. Needs a server that supports prompt logprobs (vLLM,
        llama-cpp-python's server, OpenAI's legacy completion models).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"topk_logprobs takes strings, got {type(t).__name__}")
        return self._map(lambda text, abort: self._topk_one(text, k, abort), texts)

    def close(self) -> None:
        """Close the HTTP connection pool. Safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ internals

    def _map(self, fn: Callable[[_T, threading.Event], _R], items: list[_T]) -> list[_R]:
        """Run ``fn`` over ``items`` on at most ``max_concurrency`` threads, in order.

        The first failure stops the remaining work: queued items are cancelled and
        requests in flight stop retrying; that first error is raised.
        """
        if self._client is None:
            raise BackendError("the backend is closed", hint="create a new OpenAIBackend")
        if not items:
            return []
        abort = threading.Event()
        if len(items) == 1:
            return [fn(items[0], abort)]
        pool = ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(items)), thread_name_prefix="fedcot-openai"
        )
        try:
            futures = [pool.submit(fn, item, abort) for item in items]
            for fut in as_completed(futures):
                exc = fut.exception()
                if exc is not None and not isinstance(exc, _Aborted):
                    abort.set()
                    raise exc
            return [fut.result() for fut in futures]
        finally:
            abort.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _sampling_body(self, params: GenerationParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop[:_MAX_SERVER_STOP])
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def _generate_one(
        self, prompt: Prompt, chat: bool, params: GenerationParams, abort: threading.Event
    ) -> Completion:
        body = self._sampling_body(params)
        if chat:
            body["messages"] = prompt
            path = "/chat/completions"
        else:
            body["prompt"] = prompt
            path = "/completions"
        data = self._post(path, body, abort)
        choice = self._first_choice(data, path)
        if chat:
            message = choice.get("message")
            content = message.get("content") if isinstance(message, dict) else None
        else:
            content = choice.get("text")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BackendError(
                f"unexpected response from {self.base_url}{path}: the completion text is a "
                f"{type(content).__name__}, not a string",
                hint="is base_url an OpenAI-compatible server?",
            )
        text, cut = apply_stop(content, params.stop)
        finish: FinishReason = (
            "length" if choice.get("finish_reason") == "length" and not cut else "stop"
        )
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=_as_int(usage.get("prompt_tokens")),
            completion_tokens=_as_int(usage.get("completion_tokens")),
        )

    def _first_choice(self, data: dict[str, Any], path: str) -> dict[str, Any]:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendError(
                f"unexpected response from {self.base_url}{path}: no 'choices' in it",
                hint="is base_url an OpenAI-compatible server (it usually ends in /v1)?",
            )
        return choices[0]

    def _topk_one(self, text: str, k: int, abort: threading.Event) -> TextTopKLogprobs:
        path = "/completions"
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": text,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": k,
        }
        data = self._post(path, body, abort, topk=True)
        choice = self._first_choice(data, path)
        lp = choice.get("logprobs")
        unsupported = BackendError(
            f"the server at {self.base_url} returned no prompt log-probabilities "
            "(echo + logprobs on /completions)",
            hint="use a server that supports echo with logprobs on the legacy completions "
            "endpoint (e.g. vLLM), or another backend for top-K log-probabilities",
        )
        if not isinstance(lp, dict):
            raise unsupported
        tokens = lp.get("tokens")
        top = lp.get("top_logprobs")
        if not isinstance(tokens, list) or not isinstance(top, list) or len(top) != len(tokens):
            raise unsupported

        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        n_total = len(tokens)
        if isinstance(usage.get("completion_tokens"), int) and usage["completion_tokens"] >= 0:
            n = n_total - usage["completion_tokens"]
        elif isinstance(usage.get("prompt_tokens"), int):
            n = min(usage["prompt_tokens"], n_total)
        else:
            n = n_total - 1  # max_tokens=1: assume exactly one generated token
        if n <= 0 or n > n_total:
            raise unsupported
        if usage.get("prompt_tokens") and n_total < _as_int(usage.get("prompt_tokens")) - 1:
            # fewer tokens than the prompt has: the server did not echo the prompt
            raise unsupported

        topk_tokens: list[list[str]] = []
        topk_lps: list[list[float]] = []
        for i in range(n):
            # our entry i predicts token i+1 = the server's entry i+1
            j = i + 1
            dist = top[j] if j < n_total else None
            if dist is None:
                topk_tokens.append([])
                topk_lps.append([])
                continue
            pairs = self._parse_distribution(dist)
            pairs.sort(key=lambda p: p[1], reverse=True)
            pairs = pairs[:k]
            topk_tokens.append([t for t, _ in pairs])
            topk_lps.append([v for _, v in pairs])
        prompt_tokens = [str(t) for t in tokens[:n]]
        return TextTopKLogprobs(
            token_ids=[-1] * n,
            topk_ids=[[-1] * len(row) for row in topk_tokens],
            topk_logprobs=topk_lps,
            tokens=prompt_tokens,
            topk_tokens=topk_tokens,
        )

    def _parse_distribution(self, dist: object) -> list[tuple[str, float]]:
        """One position's candidates: ``{token: logprob}`` or ``[{token, logprob}, ...]``."""
        pairs: list[tuple[str, float]] = []
        if isinstance(dist, dict):
            items: list[tuple[object, object]] = list(dist.items())
        elif isinstance(dist, list):
            items = [(d.get("token"), d.get("logprob")) for d in dist if isinstance(d, dict)]
        else:
            raise BackendError(
                f"unexpected top_logprobs entry from {self.base_url}: {type(dist).__name__}"
            )
        for tok, val in items:
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                pairs.append((str(tok), float(val)))
        return pairs

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        ceiling = min(self.backoff_max, self.backoff_base * (2.0**attempt))
        return random.uniform(0.0, ceiling)

    def _post(
        self, path: str, body: dict[str, Any], abort: threading.Event, *, topk: bool = False
    ) -> dict[str, Any]:
        """POST JSON with retries; the parsed JSON object of the first good response."""
        url = self.base_url + path
        attempts = self.max_retries + 1
        last_error = "no attempt made"
        for attempt in range(attempts):
            if abort.is_set():
                raise _Aborted
            client = self._client
            if client is None:
                raise BackendError("the backend was closed during a request")
            retry_after: float | None = None
            try:
                resp = client.post(url, json=body)
            except httpx.TimeoutException as exc:
                last_error = f"timed out after {self.timeout:g}s ({type(exc).__name__})"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                last_error = f"connection error ({type(exc).__name__}: {exc})"
            except httpx.HTTPError as exc:
                raise BackendError(
                    f"request to {url} failed: {type(exc).__name__}: {exc}",
                    hint="check base_url",
                ) from exc
            else:
                status = resp.status_code
                if status in RETRY_STATUS:
                    last_error = f"HTTP {status}: {_server_message(resp)}"
                    retry_after = _parse_retry_after(resp.headers.get("retry-after"))
                elif not resp.is_success:
                    raise self._http_error(url, resp, topk=topk)
                else:
                    try:
                        data = resp.json()
                    except ValueError:
                        snippet = resp.text[:80].replace("\n", " ")
                        last_error = f"HTTP {status} with a body that is not JSON: {snippet!r}"
                    else:
                        if isinstance(data, dict):
                            return data
                        last_error = (
                            f"HTTP {status} with a JSON {type(data).__name__}, not an object"
                        )
            if attempt + 1 < attempts:
                delay = self._backoff(attempt, retry_after)
                log.warning(
                    "%s: attempt %d/%d failed (%s); retrying in %.2fs",
                    url,
                    attempt + 1,
                    attempts,
                    last_error,
                    delay,
                )
                if abort.wait(delay):
                    raise _Aborted
        raise BackendError(
            f"request to {url} failed after {attempts} attempt{'s' if attempts != 1 else ''}; "
            f"last error: {last_error}",
            hint="is the server up and reachable? raise timeout or max_retries for a slow or "
            "overloaded server",
        )

    def _http_error(self, url: str, resp: httpx.Response, *, topk: bool) -> BackendError:
        status = resp.status_code
        message = f"HTTP {status} from {url}: {_server_message(resp)}"
        if status in (401, 403):
            hint = (
                f"check the API key (the api_key argument, else the environment variable "
                f"{self.api_key_env}) and the env var name (api_key_env)"
                if self._has_key
                else f"no API key was sent: set the environment variable {self.api_key_env} "
                "(or the one named by api_key_env), or pass api_key"
            )
        elif status == 404:
            hint = f"check base_url ({self.base_url}) and the model name ({self.model!r})"
        elif 300 <= status < 400:
            location = resp.headers.get("location", "?")
            hint = f"the server redirects to {location}: use that as base_url"
        elif topk and status in (400, 422):
            hint = (
                "the server may not support echo + logprobs on /completions, or caps logprobs "
                "below k (vLLM: --max-logprobs)"
            )
        elif status in (400, 422):
            hint = "the server rejected the request parameters; see its message above"
        else:
            hint = None
        return BackendError(message, hint=hint)
