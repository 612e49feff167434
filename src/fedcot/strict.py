"""The base of every configuration and message model: unknown keys are errors, and
assignments are validated like construction."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields (a misspelt key in a TOML file is an
    error, not a silently ignored setting) and validates every assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
