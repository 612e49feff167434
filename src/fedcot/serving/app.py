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

Errors have OpenAI's shape (:mod:`fedcot.serving.schemas`). With API keys configured, every
route but the health checks needs ``Authorization: Bearer <key>`` (compared in constant
time). Requests are micro-batched (:mod:`fedcot.serving.batcher`) and written to the audit
log (:mod:`fedcot.serving.audit`).

SIGTERM or SIGINT stops accepting connections, lets the requests in flight finish (the
batcher drains) and exits with status 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fedcot.errors import ConfigError
from fedcot.models.backends.base import Backend
from fedcot.serving.audit import audit_record
from fedcot.serving.config import ServeConfig, ServeLimits
from fedcot.serving.schemas import APIError, error_body, json_bytes
from fedcot.serving.service import Service

__all__ = ["HEALTH_PATHS", "check_port", "create_app", "make_server", "serve"]

log = logging.getLogger(__name__)

HEALTH_PATHS: tuple[str, ...] = ("/health", "/healthz")
"""Routes that need no API key and are not written to the audit log."""

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --------------------------------------------------------------------------------------
# ASGI: body limit + audit + counters, around the FastAPI app
# --------------------------------------------------------------------------------------


class _Guard:
    """Reads the whole body first (at most ``max_body_bytes``, chunked bodies too), answers
    413 when it is larger, then replays it to the app; counts and audits every request.

    The audit line is written before the last byte of the response is sent, so a client
    holding its answer knows the line is on disk.
    """

    def __init__(self, app: ASGIApp, service: Service) -> None:
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
                    svc.audit.write(audit_record(scope, t0, status, body, note))
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
                body, too_big, disconnected = await _read_body(receive, limit)
            if too_big:
                status = 413
                note = f"body over the limit of {limit} bytes: not read"
                finish()
                await _send_too_large(send, limit)
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


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, bool, bool]:
    """``(body, too_big, disconnected)``: the request body, read until its last chunk, until
    it is over ``limit`` bytes (then ``body`` is None) or until the client disconnects (then
    ``body`` is what arrived before)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return b"".join(chunks), False, True
        if msg["type"] != "http.request":
            continue
        chunk = msg.get("body", b"") or b""
        size += len(chunk)
        if size > limit:
            return None, True, False
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks), False, False


async def _send_too_large(send: Send, limit: int) -> None:
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


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_json(send: Send, status: int, content: Any, *, close: bool = False) -> None:
    data = json_bytes(content)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


# --------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------


class _JSON(JSONResponse):
    """JSON that is always valid UTF-8 (see :func:`json_bytes`)."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


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
    service = Service(
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
    _add_error_handlers(app)
    _add_routes(app, service, model_name)
    app.add_middleware(_Guard, service=service)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI-style JSON body."""

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


def _add_routes(app: FastAPI, service: Service, model_name: str) -> None:
    """The API routes (behind the API key) and the open health checks."""

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
        return service.model_card()

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
    cfg: ServeConfig,
    *,
    api_keys: set[str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve ``backend`` as ``cfg`` says until SIGTERM/SIGINT, then drain and return.

    ``api_keys`` are not part of ``cfg`` (see :class:`ServeConfig`). The port is not checked
    here: call :func:`check_port` before building ``backend`` (as ``fedcot serve`` does), so
    that a taken port is reported before the slow model load. ``announce(url)`` is told the
    API URL once the server listens; by default a line ``fedcot serve: MODEL at URL`` is
    printed to stdout.
    """
    app = create_app(
        backend,
        model_name=cfg.name,
        api_keys=api_keys,
        limits=cfg.limits,
        audit_log=cfg.audit_log,
    )

    def _print(url: str) -> None:
        print(f"fedcot serve: {cfg.name} at {url}", flush=True)

    server = make_server(
        app,
        host=cfg.host,
        port=cfg.port,
        ssl_certfile=cfg.ssl_certfile,
        ssl_keyfile=cfg.ssl_keyfile,
        log_level=cfg.log_level,
        graceful_timeout_s=cfg.graceful_timeout_s,
        announce=announce or _print,
    )
    try:
        server.run()
    finally:
        app.state.fedcot.close()
