"""Errors that say what went wrong and what to do about it."""

from __future__ import annotations


class FedcotError(Exception):
    """Base error of fedcot. ``hint`` tells the user what to do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class ConfigError(FedcotError):
    """A configuration value is missing or invalid."""


class ModelNotFoundError(FedcotError):
    """A model name or path could not be resolved."""


class DataError(FedcotError):
    """A data file is missing or malformed (the message names file and line)."""


class BackendError(FedcotError):
    """A generation backend failed (after retries, where the backend retries)."""


class MissingDependencyError(FedcotError):
    """An optional dependency is not installed."""


def require(module: str, extra: str) -> None:
    """Raise :class:`MissingDependencyError` unless ``module`` can be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"the optional dependency '{module}' is not installed",
            hint=f"pip install 'fedcot[{extra}]' (or run 'make install')",
        )
