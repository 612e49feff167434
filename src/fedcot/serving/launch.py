"""What ``fedcot serve`` does once its flags are read into a :class:`ServeConfig`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedcot.serving.app import check_port, serve

if TYPE_CHECKING:
    from rich.console import Console

    from fedcot.serving.config import ServeConfig

__all__ = ["load_and_serve"]


def load_and_serve(cfg: ServeConfig, api_keys: set[str], *, err: Console) -> None:
    """Check the port, load ``cfg``'s model, serve it until stopped, then close it.

    The port is checked before the (slow) model load. Progress and warnings (no API key:
    the server is open to whoever reaches it; where the audit log goes) are printed to
    ``err``; the line ``fedcot serve: NAME at URL`` goes to stdout once the server listens,
    and ``fedcot serve: stopped`` to ``err`` after it stopped.
    """
    check_port(cfg.host, cfg.port)  # the only port check: before the (slow) model load
    err.print(f"loading [bold]{cfg.model.model}[/] ({cfg.model.kind}) ...")
    be = cfg.model.build()
    if not api_keys:
        err.print(
            "[yellow]warning:[/] no API key: anyone who can reach "
            f"{cfg.host}:{cfg.port} can use the model (set --api-key or {cfg.api_key_env})"
        )
    if cfg.audit_log:
        err.print(f"audit log: {cfg.audit_log}")

    try:
        serve(be, cfg, api_keys=api_keys)  # prints "fedcot serve: NAME at URL" to stdout
    finally:
        be.close()
    err.print("fedcot serve: stopped")
