"""``fedcot serve``: an OpenAI-compatible HTTP server over an in-process backend.

:mod:`~fedcot.serving.config` (what to serve, where, with which limits),
:mod:`~fedcot.serving.schemas` (the wire format), :mod:`~fedcot.serving.metrics` and
:mod:`~fedcot.serving.audit` (what the operator sees), :mod:`~fedcot.serving.batcher`
(micro-batching), :mod:`~fedcot.serving.service` (a request's checks and answer) and
:mod:`~fedcot.serving.app` (the ASGI app and the uvicorn server).
"""

from fedcot.serving.app import check_port, create_app, make_server, serve
from fedcot.serving.config import ServeConfig, ServeLimits, read_api_keys

__all__ = [
    "ServeConfig",
    "ServeLimits",
    "check_port",
    "create_app",
    "make_server",
    "read_api_keys",
    "serve",
]
