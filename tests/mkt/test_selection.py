"""FedMKT teacher selection (fedcot.mkt.selection)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcot.mkt.align import SparseRows, mix_rows
from fedcot.mkt.selection import (
    SELECTIONS,
    answer_loss,
    dual_min_ce,
    loss_weights,
    min_ce,
    select_targets,
)

NAN, INF = float("nan"), float("inf")


def test_dual_min_ce_picks_better_teachers_only():
    teachers = np.array(
        [
            [1.0, 2.0, 0.5, 3.0, NAN],
            [1.0, 1.5, 0.7, 3.0, 0.2],
            [2.0, 1.5, 0.9, 3.0, INF],
        ]
    )
    learner = np.array([1.5, 1.6, 0.5, 1.0, 0.3])
    # 0: tie between teachers 0 and 1 -> lowest index; 1: tie 1/2 -> 1;
    # 2: best 0.5 is not strictly lower than 0.5 -> -1; 3: learner better than all -> -1;
    # 4: NaN / inf never chosen, teacher 1 (0.2 < 0.3)
    assert dual_min_ce(learner, teachers).tolist() == [0, 1, -1, -1, 1]
    assert dual_min_ce(learner, teachers).dtype == np.int64


def test_dual_min_ce_invalid_losses_and_shapes():
    teachers = np.array([[NAN, 1.0], [INF, NAN]])
    assert dual_min_ce(np.array([5.0, 0.5]), teachers).tolist() == [-1, -1]
    assert dual_min_ce(np.array([NAN, INF]), np.array([[1.0, 1.0]])).tolist() == [-1, 0]
    assert dual_min_ce(np.array([1.0, 2.0]), np.zeros((0, 2))).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="learner_loss"):
        dual_min_ce(np.array([1.0]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        dual_min_ce(np.array([1.0]), np.ones(1))


def test_min_ce():
    teachers = np.array([[3.0, NAN, 1.0, NAN], [2.0, 5.0, 1.0, INF]])
    assert min_ce(teachers).tolist() == [1, 1, 0, -1]


def test_loss_weights():
    losses = np.array([[0.0, 1.0, NAN, NAN], [math.log(3.0), 1.0, 2.0, INF]])
    w = loss_weights(losses)
    np.testing.assert_allclose(w[:, 0], [0.75, 0.25])  # softmax(-[0, ln 3]) = [3, 1] / 4
    np.testing.assert_allclose(w[:, 1], [0.5, 0.5])
    np.testing.assert_allclose(w[:, 2], [0.0, 1.0])  # NaN gets weight 0
    np.testing.assert_allclose(w[:, 3], [0.0, 0.0])  # all invalid: all zero
    np.testing.assert_allclose(w[:, :3].sum(axis=0), 1.0)
    # temperature: softmax(-[0, ln 3] / 2) = [sqrt 3, 1] / (sqrt 3 + 1)
    w2 = loss_weights(losses, temperature=2.0)
    np.testing.assert_allclose(w2[0, 0], math.sqrt(3) / (math.sqrt(3) + 1))
    sharp = loss_weights(np.array([[1.0], [1.1]]), temperature=0.001)
    flat = loss_weights(np.array([[1.0], [1.1]]), temperature=1000.0)
    assert sharp[0, 0] > 0.999 and abs(flat[0, 0] - 0.5) < 1e-3
    with pytest.raises(ValueError, match="temperature"):
        loss_weights(losses, temperature=0.0)


def _answer_case() -> tuple[np.ndarray, np.ndarray, float]:
    logits = np.array(
        [
            [0.0, math.log(2.0), 0.0],  # probs 1/4, 1/2, 1/4; predicts token 1
            [0.0, 0.0, math.log(3.0)],  # probs 1/5, 1/5, 3/5; predicts token 2
            [9.0, -9.0, 0.0],  # predicts past the end: unused
        ]
    )
    ids = np.array([2, 1, 2])
    nll = math.log(2.0) + math.log(5.0 / 3.0)
    return logits, ids, nll


def test_answer_loss_by_hand():
    logits, ids, nll = _answer_case()
    assert answer_loss(logits, ids, start=1) == pytest.approx(nll / 2)
    assert answer_loss(logits, ids, start=1, per="char", n_chars=7) == pytest.approx(nll / 7)
    assert answer_loss(logits, ids, start=2) == pytest.approx(math.log(5.0 / 3.0))
    assert math.isnan(answer_loss(logits, ids, start=3))  # empty continuation


def test_answer_loss_torch():
    torch = pytest.importorskip("torch")
    logits, ids, nll = _answer_case()
    got = answer_loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(ids), start=1)
    assert got == pytest.approx(nll / 2, rel=1e-6)
    got = answer_loss(torch.tensor(logits), torch.tensor(ids), 1, per="char", n_chars=3)
    assert got == pytest.approx(nll / 3, rel=1e-6)


def test_answer_loss_validation():
    logits, ids, _ = _answer_case()
    with pytest.raises(ValueError, match="n_chars"):
        answer_loss(logits, ids, 1, per="char")
    with pytest.raises(ValueError, match="per must be"):
        answer_loss(logits, ids, 1, per="word")
    with pytest.raises(ValueError, match="start"):
        answer_loss(logits, ids, 0)
    with pytest.raises(ValueError, match=r"\[T, V\]"):
        answer_loss(logits[:2], ids, 1)


def _teacher_rows() -> list[list[SparseRows]]:
    def rows(a: int, b: int, pa: float) -> SparseRows:
        lp = np.log(np.array([[pa, 1.0 - pa], [0.5, 0.5]]))
        return SparseRows(np.array([[a, b], [b, a]]), lp, np.array([True, True]))

    return [
        [rows(1, 2, 0.8), rows(3, 4, 0.6), rows(5, 6, 0.9)],
        [rows(1, 7, 0.5), rows(3, 8, 0.7), rows(5, 9, 0.6)],
    ]


def test_select_targets_all_strategies():
    assert SELECTIONS == ("dual-min-ce", "min-ce", "weighted-mean")
    teacher_rows = _teacher_rows()
    teachers = np.array([[1.0, 3.0, NAN], [2.0, 1.0, NAN]])
    learner = np.array([1.5, 0.5, 1.0])

    dual = select_targets("dual-min-ce", learner, teachers, teacher_rows)
    assert dual[0] is teacher_rows[0][0] and dual[1] is None and dual[2] is None

    best = select_targets("min-ce", learner, teachers, teacher_rows)
    assert best[0] is teacher_rows[0][0] and best[1] is teacher_rows[1][1] and best[2] is None

    mixed = select_targets("weighted-mean", learner, teachers, teacher_rows)
    assert mixed[2] is None
    w = np.exp([-1.0, -2.0]) / np.exp([-1.0, -2.0]).sum()
    expected = mix_rows([teacher_rows[0][0], teacher_rows[1][0]], w)
    first = mixed[0]
    assert first is not None
    assert first.ids.tolist() == expected.ids.tolist()
    np.testing.assert_allclose(first.logprobs, expected.logprobs)
    # by hand: id 1: w0 * 0.8 + w1 * 0.5, id 2: w0 * 0.2 (> id 7: w1 * 0.5)
    assert first.ids[0].tolist() == [1, 2]
    np.testing.assert_allclose(
        np.exp(first.logprobs[0]), [w[0] * 0.8 + w[1] * 0.5, w[0] * 0.2], rtol=1e-6
    )

    # one valid teacher: its rows, renormalised
    only = select_targets("weighted-mean", learner[:1], np.array([[1.0], [INF]]), _one_sample())
    assert only[0] is not None and only[0].ids[0].tolist() == [1, 2]


def _one_sample() -> list[list[SparseRows]]:
    rows = _teacher_rows()
    return [[rows[0][0]], [rows[1][0]]]


def test_select_targets_validation():
    teacher_rows = _teacher_rows()
    teachers = np.ones((2, 3))
    learner = np.ones(3)
    with pytest.raises(ValueError, match="dual-min-ce, min-ce, weighted-mean"):
        select_targets("max-ce", learner, teachers, teacher_rows)
    with pytest.raises(ValueError, match="teacher_rows"):
        select_targets("min-ce", learner, teachers, teacher_rows[:1])
    with pytest.raises(ValueError, match="learner_loss"):
        select_targets("min-ce", np.ones(2), teachers, teacher_rows)
