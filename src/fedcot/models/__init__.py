"""Models: the registry of embedded models and the generation backends.

:func:`prepare` turns an embedded model's name (or a GGUF file, or a transformers folder)
into a local folder; :func:`make_backend` builds the backend that answers prompts. Importing
this package loads neither torch nor transformers.
"""

from fedcot.models.backends import Backend, make_backend
from fedcot.models.registry import EMBEDDED, fedcot_home, list_models, prepare, resolve

__all__ = [
    "EMBEDDED",
    "Backend",
    "fedcot_home",
    "list_models",
    "make_backend",
    "prepare",
    "resolve",
]
