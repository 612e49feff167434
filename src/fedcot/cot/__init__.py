"""FedCoT: the client pipeline (perturb → server rationales → decode → multi-task training).

Modules: ``client`` (the stages of a run and its folder), ``config`` (:class:`FedCoTConfig`),
``templates`` (public few-shot CoT prompts), ``cache`` (the server-response cache),
``decoders`` (inverse-map, icl, trained, identity), ``encoder_decoder`` (the PDSS v1
strategy). The front door is :func:`run_fedcot` with :class:`FedCoTConfig`; importing this
package loads neither torch nor transformers.
"""

from fedcot.cot.client import FedCoTResult, RunFolder, fidelity_summary, run_fedcot
from fedcot.cot.config import FedCoTConfig
from fedcot.cot.decoders import DECODERS, make_decoder

__all__ = [
    "DECODERS",
    "FedCoTConfig",
    "FedCoTResult",
    "RunFolder",
    "fidelity_summary",
    "make_decoder",
    "run_fedcot",
]
