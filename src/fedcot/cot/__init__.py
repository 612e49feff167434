"""FedCoT: the client pipeline (perturb → server rationales → decode → multi-task training).

Modules: ``client`` (the stages of a run and its folder), ``config`` (:class:`DistillConfig`),
``templates`` (public few-shot CoT prompts), ``cache`` (the server-response cache),
``decoders`` (inverse-map, icl, trained, identity), ``encoder_decoder`` (the PDSS v1
strategy). The front door is :func:`run_distill` with :class:`DistillConfig`; importing this
package loads neither torch nor transformers.
"""

from fedcot.cot.client import DistillResult, RunFolder, fidelity_summary, run_distill
from fedcot.cot.config import DistillConfig
from fedcot.cot.decoders import DECODERS, make_decoder

__all__ = [
    "DECODERS",
    "DistillConfig",
    "DistillResult",
    "RunFolder",
    "fidelity_summary",
    "make_decoder",
    "run_distill",
]
