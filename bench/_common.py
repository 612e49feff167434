"""Shared helpers for benchmark scripts: machine description, results table in docs."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SHARED = Path(os.environ.get("FEDCOT_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, Python, torch."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        import torch

        tv = f", torch {torch.__version__}"
    except ImportError:
        tv = ""
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}{tv}"
    )


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def today() -> str:
    return _dt.date.today().isoformat()


def command() -> str:
    """The command that produced the numbers, relative to the repo root."""
    return "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(ROOT)), *sys.argv[1:]])


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section ``key`` of docs/benchmarks.md.

    Sections are delimited by HTML comments so each script owns exactly its own part.
    """
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    text = (
        DOCS.read_text()
        if DOCS.exists()
        else "# Benchmarks\n\nEvery number here was measured by a script in `bench/`.\n"
    )
    block = (
        f"<!-- bench:{key} -->\n## {title}\n\n"
        f"Measured {today()} on {machine()}.\nCommand: `{command()}`\n\n{body.strip()}\n"
        f"<!-- /bench:{key} -->"
    )
    pattern = re.compile(
        rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->", re.S
    )
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    DOCS.write_text(text)


def run_child(code: str, env: dict[str, str] | None = None) -> str:
    """Run Python code in a fresh interpreter (clean memory peak); return its stdout."""
    res = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return res.stdout
