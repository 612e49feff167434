"""Counters of ``fedcot serve``, shown at ``GET /metrics``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServeMetrics"]


@dataclass
class ServeMetrics:
    """Counters shown at ``GET /metrics``.

    ``requests``: requests received (all routes but the health checks); ``errors``: those
    answered with a 4xx or 5xx; ``batches``: backend calls; ``prompts``: prompts in them;
    ``backend_errors``: backend calls that raised.
    """

    requests: int = 0
    errors: int = 0
    batches: int = 0
    prompts: int = 0
    backend_errors: int = 0
    largest_batch: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.time)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "batches": self.batches,
            "prompts": self.prompts,
            "backend_errors": self.backend_errors,
            "largest_batch": self.largest_batch,
            "in_flight": self.in_flight,
            "uptime_s": round(time.time() - self.started, 3),
        }
