"""``fedcot serve``'s configuration: the model, the address, TLS and the request limits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedcot.config import BackendConfig
from fedcot.errors import ConfigError

__all__ = ["ServeConfig", "ServeLimits", "read_api_keys"]


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
