"""Sparse top-K distributions: the targets of a logit-distillation (KD) loss.

:class:`SparseRows` holds, per target token, the K most likely token ids and their
log-probabilities, never a vocabulary-sized vector. FedMKT builds them from a sender's
logits and maps them between tokenizers (:mod:`fedcot.mkt.align`); the KD loss of
:mod:`fedcot.train.logit_kd` reads them. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SparseRows"]


@dataclass(eq=False)
class SparseRows:
    """Sparse top-K distributions, one row per continuation token.

    Attributes:
        ids: int64 ``[n, K]`` token ids, best first; ``-1`` marks padding.
        logprobs: float32 ``[n, K]`` log-probabilities of ``ids``; ``-inf`` at padding. They
            need not sum to one over the K entries (the tail mass is not sent);
            :meth:`probs` renormalises.
        transferred: bool ``[n]``; True where the row is a real transferred distribution,
            False where it is a one-hot fallback on the observed token.
    """

    ids: np.ndarray
    logprobs: np.ndarray
    transferred: np.ndarray

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.logprobs = np.asarray(self.logprobs, dtype=np.float32)
        self.transferred = np.asarray(self.transferred, dtype=bool)
        if self.ids.ndim != 2:
            raise ValueError(f"SparseRows.ids must be 2-D [n, K], got shape {self.ids.shape}")
        if self.logprobs.shape != self.ids.shape:
            raise ValueError(
                f"SparseRows.logprobs shape {self.logprobs.shape} != ids shape {self.ids.shape}"
            )
        if self.transferred.shape != (self.ids.shape[0],):
            raise ValueError(
                f"SparseRows.transferred must have shape ({self.ids.shape[0]},), "
                f"got {self.transferred.shape}"
            )

    def __len__(self) -> int:
        """The number of rows (continuation tokens)."""
        return int(self.ids.shape[0])

    @property
    def k(self) -> int:
        """The number of entries per row (K)."""
        return int(self.ids.shape[1])

    @property
    def valid(self) -> np.ndarray:
        """bool ``[n, K]``: True at real entries, False at padding."""
        return (self.ids >= 0) & np.isfinite(self.logprobs)

    @classmethod
    def empty(cls, k: int) -> SparseRows:
        """Zero rows of width ``k``."""
        return cls(
            np.empty((0, k), dtype=np.int64),
            np.empty((0, k), dtype=np.float32),
            np.empty(0, dtype=bool),
        )

    @classmethod
    def one_hot(cls, ids: Sequence[int] | np.ndarray, k: int) -> SparseRows:
        """One-hot rows (log-prob 0 on ``ids[t]``, padding elsewhere), ``transferred=False``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = flat.shape[0]
        out_ids = np.full((n, k), -1, dtype=np.int64)
        out_lp = np.full((n, k), -np.inf, dtype=np.float32)
        out_ids[:, 0] = flat
        out_lp[:, 0] = 0.0
        return cls(out_ids, out_lp, np.zeros(n, dtype=bool))

    @classmethod
    def concat(cls, parts: Sequence[SparseRows]) -> SparseRows:
        """Stack rows of several objects (narrower ones are padded to the widest K)."""
        if not parts:
            raise ValueError("SparseRows.concat needs at least one part")
        k = max(p.k for p in parts)
        padded = [p.pad_to(k) for p in parts]
        return cls(
            np.concatenate([p.ids for p in padded]),
            np.concatenate([p.logprobs for p in padded]),
            np.concatenate([p.transferred for p in padded]),
        )

    def pad_to(self, k: int) -> SparseRows:
        """The same rows widened to ``k`` entries with padding (``k`` >= current K)."""
        if k < self.k:
            raise ValueError(f"cannot pad K={self.k} rows down to {k}")
        if k == self.k:
            return self
        n = len(self)
        ids = np.full((n, k), -1, dtype=np.int64)
        lp = np.full((n, k), -np.inf, dtype=np.float32)
        ids[:, : self.k] = self.ids
        lp[:, : self.k] = self.logprobs
        return SparseRows(ids, lp, self.transferred.copy())

    def slice(self, start: int, stop: int | None = None) -> SparseRows:
        """Rows ``start:stop`` (copies)."""
        sl = slice(start, stop)
        return SparseRows(
            self.ids[sl].copy(), self.logprobs[sl].copy(), self.transferred[sl].copy()
        )

    def log_probs_normalised(self) -> np.ndarray:
        """float64 ``[n, K]`` log-probabilities renormalised over each row's real entries."""
        valid = self.valid
        lp = np.where(valid, self.logprobs.astype(np.float64), -np.inf)
        top = np.max(lp, axis=1, keepdims=True) if self.k else np.zeros((len(self), 1))
        top = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):
            lse = np.log(np.sum(np.exp(lp - top), axis=1, keepdims=True)) + top
        out = lp - np.where(np.isfinite(lse), lse, 0.0)
        return np.where(valid, out, -np.inf)

    def probs(self) -> np.ndarray:
        """float64 ``[n, K]`` softmax over each row's real entries; zeros at padding.

        A row without any real entry is all zeros.
        """
        return np.exp(self.log_probs_normalised())
