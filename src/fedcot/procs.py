"""Child processes in their own process group (``fedcot serve``, Flower's SuperLink and
SuperNodes): a signal reaches the process and everything it started, and stopping one
escalates from a graceful signal to SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Sequence

__all__ = ["Child", "signal_group", "stop_group"]


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to ``proc``'s process group, if it is still running."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    """Send ``sig`` to the group and wait ``timeout`` seconds; SIGKILL the group if it is
    still running then. Returns the exit status (negative: the signal that ended it)."""
    signal_group(proc, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        return proc.wait(timeout=30)


class Child:
    """A command started in its own process group, its output (stdout and stderr together)
    collected line by line in ``lines`` by a reader thread."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: os.PathLike[str] | str | None = None,
        echo: bool = False,
    ) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._echo = echo
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import sys

        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self._echo:
                sys.stderr.write(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end (``subprocess.TimeoutExpired`` after ``timeout``) and
        for its last output line."""
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """:func:`stop_group`, then the rest of its output; the exit status."""
        rc = stop_group(self.proc, sig, timeout)
        self._reader.join(timeout=5)
        return rc
