"""FedMKT: mutual knowledge transfer between a server LLM and client SLMs.

Modules: ``config`` (:class:`MKTConfig`), ``party`` (a party: model, tokenizer, LoRA, its
logits; the run's data), ``steps`` (training, distillation, FedAvg and the clients' side of
each phase), ``engine`` (the round loop over a transport, the in-process transport, the run
folder), ``vocab_map``, ``align``, ``selection`` and ``payloads`` (the messages). The front
door is :func:`run_mkt` with :class:`MKTConfig`; importing this package loads neither torch
nor transformers.
"""

from fedcot.mkt.config import MKTConfig
from fedcot.mkt.engine import MKTResult, run_mkt

__all__ = ["MKTConfig", "MKTResult", "run_mkt"]
