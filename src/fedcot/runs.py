"""Run folders shared by every command that writes one: atomic JSON, versions, the
config check that guards ``--resume``."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from fedcot.errors import ConfigError

__all__ = ["check_run_config", "package_versions", "write_json"]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


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
