"""fedcot: privacy-preserving knowledge transfer between a server LLM and client SLMs.

The public API is re-exported here; heavy dependencies (torch, transformers) load only when
an in-process model is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from fedcot.config import BackendConfig, DemoConfig, EvalConfig, load_config
from fedcot.cot.client import DistillResult, run_distill
from fedcot.cot.config import DistillConfig
from fedcot.errors import (
    BackendError,
    ConfigError,
    DataError,
    FedcotError,
    MissingDependencyError,
    ModelNotFoundError,
)
from fedcot.models.backends import (
    Backend,
    Completion,
    GenerationParams,
    TopKLogprobs,
    make_backend,
)

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendError",
    "Completion",
    "ConfigError",
    "DataError",
    "DemoConfig",
    "DistillConfig",
    "DistillResult",
    "EvalConfig",
    "FedcotError",
    "GenerationParams",
    "MissingDependencyError",
    "ModelNotFoundError",
    "TopKLogprobs",
    "__version__",
    "load_config",
    "make_backend",
    "run_distill",
]
