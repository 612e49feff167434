"""FedMKT over Flower: the ServerApp and ClientApp adapters of the round loop
(:mod:`fedcot.federation.flower`) and a whole federation on one machine
(:mod:`fedcot.federation.flower_local`).

Names are imported on first use: ``import fedcot.federation`` does not load flwr.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FlowerRunOptions",
    "FlowerTransport",
    "LocalFederation",
    "run_flower_server",
    "write_flower_app",
]

_WHERE = dict.fromkeys(__all__, "fedcot.federation.flower")
_WHERE["LocalFederation"] = "fedcot.federation.flower_local"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
