"""Progress bars for long work (rich), quiet when asked or when output is not a terminal."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def _enabled() -> bool:
    return os.environ.get("FEDCOT_PROGRESS", "1") != "0"


@contextmanager
def progress_bar(
    total: int, description: str, *, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a bar with count, elapsed and remaining time."""
    if not enabled or not _enabled():
        yield lambda n: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)
