"""A small, deterministic OpenAI-compatible HTTP server for tests.

It listens on 127.0.0.1 on an OS-assigned port, in a background thread, and implements
``POST /v1/completions`` and ``POST /v1/chat/completions``:

* the answer is the prompt (or the last user message) upper-cased, cut to ``max_tokens``
  whitespace-separated words (``finish_reason`` ``"length"`` when cut, else ``"stop"``);
* ``usage`` counts words (omit it with ``include_usage=False``);
* stop strings are ignored unless ``honour_stop=True`` (to test client-side stops);
* ``echo`` + ``logprobs`` on ``/completions`` returns a legacy ``logprobs`` block in which
  the top candidate at every position is the token that actually follows; the generated
  token is ``" END"``;
* the ``Authorization`` header is checked when ``api_key`` is set;
* unknown models give 404 when ``models`` is set.

Failures are scripted with :meth:`FakeOpenAIServer.add_faults`: each incoming request takes
the next :class:`Fault` from the queue (status codes with or without ``Retry-After``, a hang,
a dropped connection, a malformed JSON body). Every request is recorded in ``requests``; the
peak number of requests handled at once is ``max_in_flight``.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAIServer", "Fault", "RecordedRequest"]


@dataclass
class Fault:
    """One scripted failure, consumed by one request.

    ``kind``: ``"status"`` (answer ``status`` with an OpenAI-style error body and, when set,
    a ``Retry-After`` header), ``"hang"`` (wait ``seconds`` before answering normally),
    ``"drop"`` (close the connection without a response), ``"malformed"`` (HTTP 200 with a
    body that is not JSON).
    """

    kind: str
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    message: str = "injected fault"

    @classmethod
    def http(cls, status: int, retry_after: str | float | None = None) -> Fault:
        """An HTTP error status, optionally with a ``Retry-After`` header."""
        ra = None if retry_after is None else str(retry_after)
        return cls("status", status=status, retry_after=ra)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before answering (longer than the client timeout)."""
        return cls("hang", seconds=seconds)

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without sending a response."""
        return cls("drop")

    @classmethod
    def malformed(cls) -> Fault:
        """Answer HTTP 200 with a truncated JSON body."""
        return cls("malformed")


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    fault: str | None = None


@dataclass
class _State:
    api_key: str | None
    models: set[str] | None
    delay: tuple[float, float]
    honour_stop: bool
    include_usage: bool
    logprobs_supported: bool
    rng: random.Random
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


_TOKEN_RE = re.compile(r"\s*\S+")


def _answer_words(text: str, max_tokens: int) -> tuple[str, str, int]:
    words = text.upper().split()
    out = words[:max_tokens]
    finish = "length" if len(words) > max_tokens else "stop"
    return " ".join(out), finish, len(out)


def _cut_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut], cut < len(text)


def _echo_logprobs(prompt: str, k: int) -> tuple[dict[str, Any], int]:
    """A legacy logprobs block for ``prompt`` + one generated token ``" END"``."""
    tokens = _TOKEN_RE.findall(prompt) or [prompt]
    all_tokens = [*tokens, " END"]
    token_logprobs: list[float | None] = [None]
    top: list[dict[str, float] | None] = [None]
    offsets = []
    pos = 0
    for t in all_tokens:
        offsets.append(pos)
        pos += len(t)
    for j in range(1, len(all_tokens)):
        actual = all_tokens[j]
        token_logprobs.append(-0.05)
        # k alternatives plus the actual token (vLLM may return k+1), in scrambled order
        dist = {f"alt{j}_{r}": -0.5 * (r + 1) for r in reversed(range(k))}
        dist[actual] = -0.05
        top.append(dist)
    block = {
        "tokens": all_tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }
    return block, len(tokens)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send_raw(status, data, headers)

    def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with state.lock:
            fault = state.faults.popleft() if state.faults else None
            state.requests.append(
                RecordedRequest(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    fault=fault.kind if fault else None,
                )
            )
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            delay = state.rng.uniform(*state.delay) if state.delay[1] > 0 else 0.0
        # The in-flight count drops *before* the response is written, so that a client
        # that starts its next request on receiving this one is never double-counted.
        done = False

        def leave() -> None:
            nonlocal done
            if not done:
                done = True
                with state.lock:
                    state.in_flight -= 1

        try:
            if delay:
                state.stopping.wait(delay)
            if fault is not None:
                if fault.kind == "drop":
                    leave()
                    self.close_connection = True
                    return
                if fault.kind == "malformed":
                    leave()
                    self._send_raw(200, b'{"choices": [{"text": "trunc')
                    return
                if fault.kind == "status":
                    leave()
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    err = {"error": {"message": fault.message, "type": "server_error"}}
                    self._send_json(fault.status, err, headers)
                    return
                if fault.kind == "hang":
                    state.stopping.wait(fault.seconds)
            status, payload = self._respond(state, body)
            leave()
            self._send_json(status, payload)
        finally:
            leave()

    def _respond(self, state: _State, body: Any) -> tuple[int, Any]:
        expected = None if state.api_key is None else f"Bearer {state.api_key}"
        if expected is not None and self.headers.get("Authorization") != expected:
            return 401, {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                }
            }
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, {"error": {"message": f"no route {self.path}"}}
        if not isinstance(body, dict):
            return 400, {"error": {"message": "the body must be a JSON object"}}
        model = body.get("model")
        if state.models is not None and model not in state.models:
            return 404, {"error": {"message": f"The model `{model}` does not exist."}}
        max_tokens = int(body.get("max_tokens") or 16)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        usage: dict[str, int] | None
        if self.path == "/v1/chat/completions":
            messages = body.get("messages") or []
            users = [m["content"] for m in messages if m.get("role") == "user"]
            source = users[-1] if users else ""
            text, finish, n_out = _answer_words(source, max_tokens)
            if state.honour_stop:
                text, cut = _cut_stop(text, stop)
                finish = "stop" if cut else finish
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
            n_in = sum(len(str(m.get("content", "")).split()) for m in messages)
            obj = "chat.completion"
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                return 400, {"error": {"message": "prompt must be a string"}}
            if body.get("echo") and body.get("logprobs"):
                if not state.logprobs_supported:
                    return 400, {"error": {"message": "echo with logprobs is not supported"}}
                block, n_in = _echo_logprobs(prompt, int(body["logprobs"]))
                choice = {
                    "index": 0,
                    "text": prompt + " END",
                    "logprobs": block,
                    "finish_reason": "length",
                }
                n_out = 1
            else:
                text, finish, n_out = _answer_words(prompt, max_tokens)
                if state.honour_stop:
                    text, cut = _cut_stop(text, stop)
                    finish = "stop" if cut else finish
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                n_in = len(prompt.split())
            obj = "text_completion"
        usage = (
            {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
            if state.include_usage
            else None
        )
        payload: dict[str, Any] = {"id": "fake-1", "object": obj, "model": model}
        payload["choices"] = [choice]
        if usage is not None:
            payload["usage"] = usage
        return 200, payload


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class FakeOpenAIServer:
    """A scripted OpenAI-compatible server; use as a context manager or call start/stop."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: set[str] | None = None,
        delay: tuple[float, float] = (0.0, 0.0),
        honour_stop: bool = False,
        include_usage: bool = True,
        logprobs_supported: bool = True,
        seed: int = 0,
    ) -> None:
        self._state = _State(
            api_key=api_key,
            models=models,
            delay=delay,
            honour_stop=honour_stop,
            include_usage=include_usage,
            logprobs_supported=logprobs_supported,
            rng=random.Random(seed),
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- configuration, changeable between requests
    @property
    def state(self) -> _State:
        """The mutable server state (settings, fault queue, recorded requests)."""
        return self._state

    def add_faults(self, *faults: Fault) -> None:
        """Queue faults; each of the next requests takes one, in order."""
        with self._state.lock:
            self._state.faults.extend(faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the requests seen so far."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def max_in_flight(self) -> int:
        """The peak number of requests handled at once."""
        return self._state.max_in_flight

    def count(self, path: str | None = None) -> int:
        """How many requests arrived (to ``path`` when given)."""
        return sum(1 for r in self.requests if path is None or r.path == path)

    # -- lifecycle
    @property
    def root(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The API base URL, ``http://127.0.0.1:PORT/v1``."""
        return self.root + "/v1"

    def start(self) -> FakeOpenAIServer:
        """Bind an OS-assigned port and serve in a daemon thread."""
        self._server = _Server(self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-openai-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hanging handlers, stop serving, close the socket."""
        self._state.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
