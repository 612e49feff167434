"""Run folders shared by every command that writes one: atomic JSON and JSONL, versions,
the config check that guards ``--resume``, and :class:`RunFolder`, the base of FedCoT's and
FedMKT's run folders."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedcot.errors import ConfigError

__all__ = [
    "RunFolder",
    "check_run_config",
    "package_versions",
    "read_json",
    "read_jsonl",
    "write_json",
    "write_jsonl",
]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when there is no such file."""
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]], *, strict: bool = False) -> None:
    """Write one JSON object a line, atomically. ``strict``: JSON that any parser reads (no
    NaN or Infinity; lone surrogates written as U+FFFD)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    errors = "replace" if strict else "strict"
    with tmp.open("w", encoding="utf-8", errors=errors) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=not strict) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every object of a JSONL file (blank lines skipped)."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def package_versions(*extra: str) -> dict[str, str]:
    """Python, platform and the versions of the packages a run depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("fedcot", "torch", "transformers", "peft", "numpy", *extra):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def check_run_config(config_file: Path, text: str, *, resume: bool) -> None:
    """Refuse to overwrite a run, or to resume one made with another configuration."""
    if not config_file.exists():
        return
    folder = config_file.parent
    if not resume:
        raise ConfigError(
            f"run folder {folder} already holds a run",
            hint="pass --resume to continue it, or choose another output_dir",
        )
    if config_file.read_text(encoding="utf-8") != text:
        raise ConfigError(
            f"run folder {folder} holds a run with a different configuration",
            hint="resume with the same config, or choose another output_dir",
        )


class RunFolder:
    """One run's folder: ``config.yaml`` (a resume must use the same config), ``state.json``
    (how far the run got), ``metrics.json`` and ``manifest.json``. FedCoT's and FedMKT's run
    folders name their other files on top of it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def state(self) -> Path:
        return self.path / "state.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def open(self, config_text: str, *, resume: bool) -> None:
        """Create the folder, or check that the run in it was made with this config."""
        check_run_config(self.config, config_text, resume=resume)
        self.path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text, encoding="utf-8")

    def load_state(self) -> dict[str, Any]:
        return read_json(self.state, {})

    def save_state(self, state: dict[str, Any]) -> None:
        write_json(self.state, state)
