"""The audit log of ``fedcot serve``.

The audit log (JSONL, one line per request, flushed and fsynced) records what the operator
of this server sees: the time, route, client address, the model, the prompt(s) or messages
exactly as received, the other parameters and the response status. For FedCoT this is the
place to check that only perturbed text arrives.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedcot.errors import ConfigError
from fedcot.serving.schemas import reject_constant

__all__ = ["AuditLog", "audit_record"]


class AuditLog:
    """Append-only JSONL: one line per request, flushed and fsynced as it is written.

    A new file is created readable by its owner only (it holds every prompt received).
    Lines are ASCII JSON (non-ASCII text is \\u-escaped), so any text received, even text
    that is not valid Unicode, is recorded exactly.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the audit log {self.path}: {exc}",
                hint="choose a writable --audit-log path",
            ) from exc
        self._file = os.fdopen(fd, "a", encoding="ascii")
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        try:
            line = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
        except (ValueError, RecursionError):
            # Too deeply nested or not serialisable: keep what is sure to serialise.
            record = {k: v for k, v in record.items() if k not in ("prompt", "messages", "params")}
            record["note"] = "body could not be re-serialised; see raw"
            line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str)
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def audit_record(
    scope: dict[str, Any], t0: float, status: int | None, body: bytes | None, note: str | None
) -> dict[str, Any]:
    """The audit line of one request: ``scope`` is its ASGI scope, ``t0`` when it arrived."""
    client = scope.get("client")
    rec: dict[str, Any] = {
        "time": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="milliseconds"),
        "route": scope.get("path", ""),
        "method": scope.get("method", ""),
        "client": f"{client[0]}:{client[1]}" if client else None,
        "status": status,
        "ms": round(1000 * (time.time() - t0), 1),
    }
    if body is None:
        rec["bytes"] = None
    else:
        rec["bytes"] = len(body)
        if body:
            try:
                data = json.loads(body.decode("utf-8"), parse_constant=reject_constant)
            except (ValueError, RecursionError):
                rec["raw"] = body.decode("utf-8", "backslashreplace")
            else:
                if isinstance(data, dict):
                    rec["model"] = data.get("model")
                    for key in ("prompt", "messages"):
                        if key in data:
                            rec[key] = data[key]
                    rec["params"] = {
                        k: v for k, v in data.items() if k not in ("model", "prompt", "messages")
                    }
                else:
                    rec["body"] = data
    if note:
        rec["note"] = note
    return rec
