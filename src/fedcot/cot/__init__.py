"""FedCoT: the client pipeline (perturb → server rationales → decode → multi-task training).

Modules: ``client`` (the pipeline, run folders), ``templates`` (public few-shot CoT prompts),
``cache`` (the server-response cache), ``decoders`` (inverse-map, icl, trained, identity),
``encoder_decoder`` (the PDSS v1 strategy). Import them directly; this package imports
nothing heavy.
"""
