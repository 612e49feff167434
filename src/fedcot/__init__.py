"""fedcot: privacy-preserving knowledge transfer between a server LLM and client SLMs.

The two algorithms' front doors: :func:`run_fedcot` with :class:`FedCoTConfig` (FedCoT /
PDSS: private prompts, the server's rationales, a multi-task student) and :func:`run_mkt`
with :class:`MKTConfig` (FedMKT: mutual knowledge transfer through top-K logits). Heavy
dependencies (torch, transformers, peft) load only when a model is used.
"""

from __future__ import annotations

from fedcot.config import BackendConfig, DemoConfig, EvalConfig, load_config
from fedcot.cot.client import FedCoTResult, run_fedcot
from fedcot.cot.config import FedCoTConfig
from fedcot.errors import (
    BackendError,
    ConfigError,
    DataError,
    FedcotError,
    MissingDependencyError,
    ModelNotFoundError,
)
from fedcot.mkt import MKTConfig, MKTResult, run_mkt
from fedcot.models.backends import (
    Backend,
    Completion,
    GenerationParams,
    TopKLogprobs,
    make_backend,
)
from fedcot.version import __version__

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendError",
    "Completion",
    "ConfigError",
    "DataError",
    "DemoConfig",
    "EvalConfig",
    "FedCoTConfig",
    "FedCoTResult",
    "FedcotError",
    "GenerationParams",
    "MKTConfig",
    "MKTResult",
    "MissingDependencyError",
    "ModelNotFoundError",
    "TopKLogprobs",
    "__version__",
    "load_config",
    "make_backend",
    "run_fedcot",
    "run_mkt",
]
