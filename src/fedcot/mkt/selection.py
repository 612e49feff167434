"""Teacher selection for FedMKT knowledge distillation.

Every party scores the public samples with its own model and with the rows it received from
the other parties. Per sample, a learner then distills from

* ``"dual-min-ce"``: the teacher with the lowest loss, but only if that loss is strictly
  lower than the learner's own loss (FedMKT's dual minimum cross-entropy);
* ``"min-ce"``: the teacher with the lowest loss, whatever the learner's loss;
* ``"weighted-mean"``: a mixture of all teachers weighted by ``softmax(-loss / T)``.

Losses of different tokenizers are only comparable when normalised the same way; the
per-character loss of :func:`answer_loss` (``per="char"``) is the tokenizer-independent one.
NaN or infinite losses are never selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedcot.mkt.align import mix_rows
from fedcot.train.sparse import SparseRows

__all__ = [
    "SELECTIONS",
    "answer_loss",
    "dual_min_ce",
    "loss_weights",
    "min_ce",
    "select_targets",
]

SELECTIONS: tuple[str, ...] = ("dual-min-ce", "min-ce", "weighted-mean")


def _teacher_matrix(teacher_losses: Any) -> np.ndarray:
    losses = np.asarray(teacher_losses, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(f"teacher_losses must be 2-D [M, N], got shape {losses.shape}")
    return losses


def min_ce(teacher_losses: np.ndarray) -> np.ndarray:
    """int64 ``[N]``: per sample the index of the lowest-loss teacher (``teacher_losses``
    ``[M, N]``); ties go to the lowest index; -1 where no teacher has a finite loss."""
    losses = _teacher_matrix(teacher_losses)
    m, n = losses.shape
    if m == 0:
        return np.full(n, -1, dtype=np.int64)
    masked = np.where(np.isfinite(losses), losses, np.inf)
    best = np.argmin(masked, axis=0).astype(np.int64)  # first minimum = lowest index
    best[~np.isfinite(masked[best, np.arange(n)])] = -1
    return best


def dual_min_ce(learner_loss: np.ndarray, teacher_losses: np.ndarray) -> np.ndarray:
    """int64 ``[N]``: the teacher to distill from per sample, or -1 for no distillation.

    ``learner_loss`` is ``[N]``, ``teacher_losses`` ``[M, N]``. The lowest-loss teacher
    (ties: lowest index; NaN/inf losses never chosen) is kept only if its loss is strictly
    lower than the learner's own loss. A NaN learner loss selects nobody; a ``+inf`` learner
    loss selects any teacher with a finite loss.
    """
    losses = _teacher_matrix(teacher_losses)
    own = np.asarray(learner_loss, dtype=np.float64)
    if own.ndim != 1 or own.shape[0] != losses.shape[1]:
        raise ValueError(
            f"learner_loss must be [N] with N = teacher_losses.shape[1] = {losses.shape[1]}, "
            f"got shape {own.shape}"
        )
    best = min_ce(losses)
    chosen = best >= 0
    better = np.zeros_like(chosen)
    better[chosen] = losses[best[chosen], np.nonzero(chosen)[0]] < own[chosen]
    return np.where(better, best, -1).astype(np.int64)


def loss_weights(teacher_losses: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 ``[M, N]``: per sample ``softmax(-loss / temperature)`` over the teachers.

    NaN/inf losses get weight 0; a sample whose losses are all invalid gets all zeros.
    Lower temperatures concentrate the weight on the best teacher.
    """
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    losses = _teacher_matrix(teacher_losses)
    valid = np.isfinite(losses)
    z = np.where(valid, -losses / temperature, -np.inf)
    if z.shape[0] == 0:
        return np.zeros_like(z)
    top = np.max(z, axis=0, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(valid, np.exp(z - top), 0.0)
    total = e.sum(axis=0, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def answer_loss(
    logits: Any,
    input_ids: Any,
    start: int,
    per: str = "token",
    n_chars: int | None = None,
) -> float:
    """The loss of one sequence on its continuation tokens ``start..T-1``.

    Args:
        logits: ``[T, V]`` logits (torch tensor or numpy array); position ``i`` predicts
            token ``i + 1``.
        input_ids: ``[T]`` token ids.
        start: index of the first continuation token, >= 1.
        per: ``"token"``: mean negative log-likelihood per continuation token; ``"char"``:
            summed negative log-likelihood divided by ``n_chars``, the number of characters
            of the continuation text (comparable across tokenizers).
        n_chars: required (> 0) for ``per="char"``.

    Returns:
        The loss in nats, NaN when the continuation is empty (an empty continuation is
        never selected as a teacher).
    """
    if per not in ("token", "char"):
        raise ValueError(f"per must be 'token' or 'char', got {per!r}")
    if per == "char" and (n_chars is None or n_chars <= 0):
        raise ValueError(f"per='char' needs n_chars > 0, got {n_chars}")
    ids = np.asarray(
        input_ids.detach().cpu().numpy() if hasattr(input_ids, "detach") else input_ids,
        dtype=np.int64,
    )
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be 1-D [T], got shape {ids.shape}")
    n_tokens = ids.shape[0]
    if len(logits.shape) != 2 or int(logits.shape[0]) != n_tokens:
        raise ValueError(
            f"logits must be [T, V] with T = len(input_ids) = {n_tokens}, "
            f"got shape {tuple(logits.shape)}"
        )
    if start < 1 or start > n_tokens:
        raise ValueError(f"start must be in [1, {n_tokens}], got {start}")
    targets = ids[start:]
    if targets.size == 0:
        return float("nan")
    if hasattr(logits, "detach"):  # torch: reduce on the tensor's device
        import torch

        with torch.no_grad():
            rows = logits.detach()[start - 1 : n_tokens - 1].float()
            lp = torch.log_softmax(rows, dim=-1)
            index = torch.as_tensor(targets, device=lp.device).unsqueeze(1)
            total = -float(torch.gather(lp, 1, index).sum())
    else:
        rows = np.asarray(logits, dtype=np.float64)[start - 1 : n_tokens - 1]
        top = np.max(rows, axis=1, keepdims=True)
        lse = np.log(np.sum(np.exp(rows - top), axis=1)) + top[:, 0]
        total = float(np.sum(lse - rows[np.arange(targets.size), targets]))
    return total / targets.size if per == "token" else total / float(n_chars or 1)


def select_targets(
    selection: str,
    learner_loss: np.ndarray,
    teacher_losses: np.ndarray,
    teacher_rows: Sequence[Sequence[SparseRows]],
    temperature: float = 1.0,
) -> list[SparseRows | None]:
    """Per public sample the rows to distill from, or None for no distillation.

    Args:
        selection: one of :data:`SELECTIONS`.
        learner_loss: ``[N]`` the learner's own loss per sample.
        teacher_losses: ``[M, N]`` each teacher's loss per sample.
        teacher_rows: ``teacher_rows[m][n]``: teacher ``m``'s rows for sample ``n``, already
            in the learner's vocabulary and positions (:func:`~fedcot.mkt.align.transfer_rows`).
        temperature: softmax temperature of ``"weighted-mean"``.

    ``"dual-min-ce"`` returns the :func:`dual_min_ce` teacher's rows (None where the learner
    is at least as good), ``"min-ce"`` the :func:`min_ce` teacher's rows (None where no teacher
    has a finite loss), ``"weighted-mean"`` the :func:`~fedcot.mkt.align.mix_rows` mixture of
    the teachers with positive :func:`loss_weights` (None where there is none).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    losses = _teacher_matrix(teacher_losses)
    m, n = losses.shape
    own = np.asarray(learner_loss, dtype=np.float64)
    if own.shape != (n,):
        raise ValueError(f"learner_loss must have shape ({n},), got {own.shape}")
    if len(teacher_rows) != m or any(len(rows) != n for rows in teacher_rows):
        raise ValueError(
            f"teacher_rows must be [M={m}][N={n}], got "
            f"{len(teacher_rows)} teachers with {[len(r) for r in teacher_rows]} samples"
        )
    if selection == "weighted-mean":
        weights = loss_weights(losses, temperature)
        out: list[SparseRows | None] = []
        for j in range(n):
            use = np.nonzero(weights[:, j] > 0)[0]
            if use.size == 0:
                out.append(None)
            else:
                out.append(mix_rows([teacher_rows[i][j] for i in use], weights[use, j]))
        return out
    chosen = dual_min_ce(own, losses) if selection == "dual-min-ce" else min_ce(losses)
    return [None if int(i) < 0 else teacher_rows[int(i)][j] for j, i in enumerate(chosen)]
