"""FedMKT token alignment and sparse top-K logit transfer (fedcot.mkt.align)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcot.mkt.align import (
    SparseRows,
    align_tokens,
    continuation_rows,
    mix_rows,
    one_to_one,
    transfer_rows,
)


def _log_softmax(row: np.ndarray) -> np.ndarray:
    row = np.asarray(row, dtype=np.float64)
    return row - (np.log(np.sum(np.exp(row - row.max()))) + row.max())


def _rows(ids: list[list[int]], probs: list[list[float]], transferred=None) -> SparseRows:
    """SparseRows from probabilities (padding where the id is -1)."""
    ids_a = np.array(ids, dtype=np.int64)
    with np.errstate(divide="ignore"):
        lp = np.where(ids_a >= 0, np.log(np.array(probs, dtype=np.float64)), -np.inf)
    flags = np.ones(len(ids), dtype=bool) if transferred is None else np.array(transferred)
    return SparseRows(ids_a, lp, flags)


# ------------------------------------------------------------------------------------------
# SparseRows


def test_sparse_rows_one_hot_probs_concat_slice():
    rows = SparseRows.one_hot([5, 7], 3)
    assert len(rows) == 2 and rows.k == 3
    assert rows.ids.tolist() == [[5, -1, -1], [7, -1, -1]]
    assert rows.logprobs[:, 0].tolist() == [0.0, 0.0]
    assert np.all(np.isneginf(rows.logprobs[:, 1:]))
    assert rows.transferred.tolist() == [False, False]
    assert rows.probs().tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]

    other = _rows([[1, 2], [3, -1]], [[0.2, 0.2], [0.5, 1.0]])  # unnormalised on purpose
    np.testing.assert_allclose(other.probs(), [[0.5, 0.5], [1.0, 0.0]])
    both = SparseRows.concat([rows, other])
    assert len(both) == 4 and both.k == 3
    assert both.ids[2].tolist() == [1, 2, -1]
    assert both.transferred.tolist() == [False, False, True, True]
    part = both.slice(1, 3)
    assert part.ids.tolist() == [[7, -1, -1], [1, 2, -1]]
    with pytest.raises(ValueError, match="logprobs shape"):
        SparseRows(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros(2, dtype=bool))


# ------------------------------------------------------------------------------------------
# continuation_rows


def test_continuation_rows_next_token_shift():
    t_len, vocab = 6, 10
    logits = np.zeros((t_len, vocab), dtype=np.float32)
    for i in range(t_len):
        logits[i, (i + 3) % vocab] = 20.0  # position i puts (almost) all mass on id i + 3
    input_ids = np.array([9, 9, 9, 9, 9, 9])
    rows = continuation_rows(logits, input_ids, start=2, k=2)
    assert len(rows) == t_len - 2
    # row t comes from position start + t - 1 = 1, 2, 3, 4
    assert rows.ids[:, 0].tolist() == [4, 5, 6, 7]
    assert rows.transferred.all()
    expected = _log_softmax(logits[1])
    assert rows.logprobs[0, 0] == pytest.approx(expected[4], abs=1e-5)
    # the runner-up is a tie of nine ids at 0.0: the lowest id wins
    assert rows.ids[:, 1].tolist() == [0, 0, 0, 0]
    assert rows.logprobs[0, 1] == pytest.approx(expected[0], abs=1e-5)


def test_continuation_rows_order_and_tie_break():
    three = np.zeros((3, 6))  # positions 0 and 1 predict the continuation tokens 1 and 2
    three[0] = [1.0, 3.0, 2.0, 3.0, 0.0, 3.0]
    three[1] = [1.0, 3.0, 2.0, 2.0, 0.0, 2.0]
    rows = continuation_rows(three, [0, 1, 2], start=1, k=4)
    assert rows.ids[0].tolist() == [1, 3, 5, 2]  # three-way tie at 3.0 in id order, then 2.0
    assert rows.ids[1].tolist() == [1, 2, 3, 5]  # tie at the threshold: ids 2, 3, 5 in order
    two = continuation_rows(three, [0, 1, 2], start=1, k=2)
    assert two.ids.tolist() == [[1, 3], [1, 2]]
    lp = _log_softmax(three[0])
    np.testing.assert_allclose(rows.logprobs[0], lp[[1, 3, 5, 2]], atol=1e-6)
    assert np.all(np.diff(rows.logprobs, axis=1) <= 0)  # best first


def test_continuation_rows_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 40)).astype(np.float32)
    logits[3, [4, 9, 17]] = 5.0  # an exact tie
    logits[4] = 1.0  # all tied: the lowest ids
    ids = np.arange(7)
    a = continuation_rows(logits, ids, 2, 5)
    b = continuation_rows(torch.from_numpy(logits), torch.from_numpy(ids), 2, 5)
    assert a.ids.tolist() == b.ids.tolist()
    assert a.ids[2, :3].tolist() == [4, 9, 17]
    assert a.ids[3].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="NaN"):
        continuation_rows(torch.full((3, 4), float("nan")), torch.arange(3), 1, 2)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_continuation_rows_validation_and_padding():
    logits = np.zeros((4, 3))
    with pytest.raises(ValueError, match="start must be >= 1"):
        continuation_rows(logits, [1, 2, 3, 4], start=0, k=2)
    with pytest.raises(ValueError, match="beyond"):
        continuation_rows(logits, [1, 2, 3, 4], start=5, k=2)
    with pytest.raises(ValueError, match=r"\[T, V\]"):
        continuation_rows(logits, [1, 2, 3], start=1, k=2)
    assert len(continuation_rows(logits, [1, 2, 3, 4], start=4, k=2)) == 0
    wide = continuation_rows(logits, [1, 2, 3, 4], start=3, k=5)  # K > V: padded
    assert wide.ids.tolist() == [[0, 1, 2, -1, -1]]
    np.testing.assert_allclose(wide.probs()[0], [1 / 3, 1 / 3, 1 / 3, 0, 0])
    masked = np.array([[0.0, -np.inf, 1.0], [0.0, 0.0, 0.0]])
    rows = continuation_rows(masked, [0, 1], start=1, k=3)
    assert rows.ids.tolist() == [[2, 0, -1]]  # a -inf logit becomes padding
    with pytest.raises(ValueError, match="all -inf"):
        continuation_rows(np.full((2, 3), -np.inf), [0, 1], start=1, k=2)


# ------------------------------------------------------------------------------------------
# align_tokens / one_to_one


def test_align_identical_is_diagonal():
    toks = ["The", " cat", " sat", ".", " The", " cat"]
    path = align_tokens(toks, toks)
    assert path == [(i, i) for i in range(len(toks))]
    assert one_to_one(path, 6, 6).tolist() == list(range(6))


def test_align_many_to_one_both_directions():
    a = [" wood", "ed", " area"]
    b = [" wooded", " area"]
    path = align_tokens(a, b)
    assert path == [(0, 0), (1, 0), (2, 1)]
    assert one_to_one(path, 3, 2).tolist() == [-1, 2]
    back = align_tokens(b, a)
    assert back == [(0, 0), (0, 1), (1, 2)]
    assert one_to_one(back, 2, 3).tolist() == [-1, -1, 1]


def test_align_pieces_and_space_markers():
    a = ["\u2581The", "\u2581un", "believ", "able", "\u2581result"]  # SentencePiece pieces
    b = ["\u0120The", "\u0120unbelievable", " result"]  # byte-level BPE pieces
    path = align_tokens(a, b)
    assert path == [(0, 0), (1, 1), (2, 1), (3, 1), (4, 2)]
    assert one_to_one(path, 5, 3).tolist() == [0, -1, 4]


def test_align_crossing_boundaries_are_not_one_to_one():
    a = ["unbel", "ievable", " news"]
    b = ["un", "believable", " news"]
    path = align_tokens(a, b)
    assert path == [(0, 0), (0, 1), (1, 1), (2, 2)]
    assert one_to_one(path, 3, 3).tolist() == [-1, -1, 2]


def test_align_character_level_vs_word_level():
    words = ["I", " saw", " a", " cat", "."]
    chars = list("I saw a cat.")
    path = align_tokens(chars, words)
    expected = [(0, 0)] + [(i, 1) for i in range(1, 5)] + [(5, 2), (6, 2)]
    expected += [(i, 3) for i in range(7, 11)] + [(11, 4)]
    assert path == expected
    assert one_to_one(path, len(chars), len(words)).tolist() == [0, -1, -1, -1, 11]
    # every index of both sides appears
    assert {i for i, _ in path} == set(range(len(chars)))
    assert {j for _, j in path} == set(range(len(words)))


def test_align_texts_that_differ():
    # byte pieces decoded as replacement characters on one side
    a = [" don", "\ufffd", "\ufffd", "\ufffd", "t", " go"]
    b = [" don", "\u2019", "t", " go"]
    path = align_tokens(a, b)
    assert path[0] == (0, 0) and path[-1] == (5, 3)
    match = one_to_one(path, len(a), len(b))
    assert match[0] == 0 and match[3] == 5
    assert {i for i, _ in path} == set(range(len(a)))
    assert {j for _, j in path} == set(range(len(b)))


def test_align_empty_and_single():
    assert align_tokens([], ["a"]) == []
    assert align_tokens(["a"], []) == []
    assert align_tokens([], []) == []
    assert align_tokens(["abc"], ["a", "b", "c"]) == [(0, 0), (0, 1), (0, 2)]
    assert one_to_one([], 0, 2).tolist() == [-1, -1]


def test_align_equal_costs_are_deterministic():
    # nothing overlaps (empty texts): every pair costs the same, fewest pairs win
    assert align_tokens(["", ""], ["", ""]) == [(0, 0), (1, 1)]
    assert align_tokens(["", "", ""], ["", ""]) == [(0, 0), (1, 0), (2, 1)]
    assert align_tokens(["", ""], ["", "", ""]) == [(0, 0), (0, 1), (1, 2)]


def test_align_tie_break_order(monkeypatch):
    import fedcot.mkt.align as align

    # all costs equal: diagonal first
    monkeypatch.setattr(align, "_cost_matrix", lambda a, b: np.zeros((2, 2)))
    assert align_tokens(["x", "y"], ["x", "y"]) == [(0, 0), (1, 1)]
    # predecessors (0, 1) and (1, 0) of (1, 1) both at -1, the diagonal at 0: the last step
    # is taken as (1, 0), i.e. from (0, 1)
    cost = np.array([[0.0, -1.0], [-1.0, 0.0]])
    monkeypatch.setattr(align, "_cost_matrix", lambda a, b: cost)
    assert align_tokens(["x", "y"], ["x", "y"]) == [(0, 0), (0, 1), (1, 1)]
    # without the tie, (0, 1) is taken where it is cheaper
    cost2 = np.array([[0.0, -1.0], [-2.0, 0.0]])
    monkeypatch.setattr(align, "_cost_matrix", lambda a, b: cost2)
    assert align_tokens(["x", "y"], ["x", "y"]) == [(0, 0), (1, 0), (1, 1)]


def test_one_to_one_rejects_bad_indices():
    with pytest.raises(ValueError):
        one_to_one([(0, 0), (1, 2)], 2, 2)


# ------------------------------------------------------------------------------------------
# transfer_rows


def _teacher() -> tuple[list[str], SparseRows]:
    texts = [" the", " wood", "ed", " area"]
    rows = _rows(
        [[0, 1, 2], [6, 7, -1], [8, -1, -1], [3, 4, 5]],
        [[0.5, 0.3, 0.1], [0.9, 0.05, 1.0], [1.0, 1.0, 1.0], [0.6, 0.2, 0.1]],
    )
    return texts, rows


VOCAB_MAP = np.array([20, 21, 20, -1, 23, 23, 26, 27, 28])  # 0 and 2 collide, 4 and 5 collide


def test_transfer_rows_maps_merges_and_falls_back():
    texts, rows = _teacher()
    out = transfer_rows(texts, rows, [" the", " wooded", " area"], [10, 11, 12], VOCAB_MAP)
    assert out.k == 3 and len(out) == 3
    # " the": 0 -> 20 and 2 -> 20 merge: log(0.5 + 0.1); 1 -> 21
    assert out.ids[0].tolist() == [20, 21, -1]
    np.testing.assert_allclose(out.logprobs[0, :2], np.log([0.6, 0.3]), rtol=1e-6)
    assert np.isneginf(out.logprobs[0, 2])
    # " wooded" is many-to-one (" wood" + "ed"): one-hot on the learner's own id
    assert out.ids[1].tolist() == [11, -1, -1] and out.logprobs[1, 0] == 0.0
    # " area": 3 -> -1 dropped; 4, 5 -> 23 merged: log(0.2 + 0.1)
    assert out.ids[2].tolist() == [23, -1, -1]
    np.testing.assert_allclose(out.logprobs[2, 0], np.log(0.3), rtol=1e-6)
    assert out.transferred.tolist() == [True, False, True]


def test_transfer_rows_top_k_and_teacher_fallback_rows():
    texts, rows = _teacher()
    learner = [" the", " wooded", " area"]
    one = transfer_rows(texts, rows, learner, [10, 11, 12], VOCAB_MAP, k=1)
    assert one.ids.tolist() == [[20], [11], [23]]
    # the teacher's own one-hot fallback is not passed on as a transferred row
    rows.transferred[0] = False
    out = transfer_rows(texts, rows, learner, [10, 11, 12], VOCAB_MAP)
    assert out.ids[0].tolist() == [10, -1, -1] and not out.transferred[0]
    # nothing left after mapping: fallback; ids beyond the map are dropped too
    rows = _rows([[3, 99], [3, -1]], [[0.7, 0.2], [1.0, 1.0]])
    out = transfer_rows([" a", " b"], rows, [" a", " b"], [5, 6], VOCAB_MAP, k=2)
    assert out.ids.tolist() == [[5, -1], [6, -1]]
    assert out.transferred.tolist() == [False, False]


def test_transfer_rows_identity_map_preserves_probabilities():
    texts = ["Hello", ",", " world", "!"]
    rows = _rows(
        [[1, 2, 3], [4, 0, -1], [2, 1, 0], [3, 4, 0]],
        [[0.7, 0.2, 0.05], [0.6, 0.3, 1.0], [0.45, 0.4, 0.1], [0.9, 0.05, 0.01]],
    )
    out = transfer_rows(texts, rows, texts, [1, 4, 2, 3], np.arange(5))
    assert out.ids.tolist() == rows.ids.tolist()
    np.testing.assert_allclose(out.probs(), rows.probs(), atol=1e-6)
    np.testing.assert_allclose(out.logprobs, rows.logprobs, atol=1e-6)  # -inf == -inf
    assert out.transferred.all()


def test_transfer_rows_validates_lengths():
    texts, rows = _teacher()
    with pytest.raises(ValueError, match="teacher_texts"):
        transfer_rows(texts[:3], rows, [" a"], [1], VOCAB_MAP)
    with pytest.raises(ValueError, match="learner_texts"):
        transfer_rows(texts, rows, [" a", " b"], [1], VOCAB_MAP)
    with pytest.raises(ValueError, match="vocab_map"):
        transfer_rows(texts, rows, [" a"], [1], np.zeros((2, 2), dtype=np.int64))


# ------------------------------------------------------------------------------------------
# mix_rows


def test_mix_rows_by_hand():
    first = _rows([[1, 2], [7, -1]], [[0.6, 0.4], [1.0, 1.0]], transferred=[True, False])
    # unnormalised log-probs: renormalised over the K entries to 0.5 / 0.5
    second = _rows([[2, 3], [7, -1]], [[0.25, 0.25], [1.0, 1.0]], transferred=[True, False])
    mixed = mix_rows([first, second], np.array([0.5, 0.5]))
    # id 1: 0.5 * 0.6 = 0.3; id 2: 0.5 * 0.4 + 0.5 * 0.5 = 0.45; id 3: 0.25 -> top 2
    assert mixed.ids[0].tolist() == [2, 1]
    np.testing.assert_allclose(np.exp(mixed.logprobs[0]), [0.45, 0.3], rtol=1e-6)
    assert mixed.ids[1].tolist() == [7, -1]
    assert mixed.logprobs[1, 0] == pytest.approx(0.0, abs=1e-7)
    assert mixed.transferred.tolist() == [True, False]

    wide = _rows([[5, 6, 7]], [[0.5, 0.3, 0.2]])
    narrow = _rows([[8]], [[1.0]], transferred=[False])
    mixed = mix_rows([wide, narrow], [0.8, 0.2])  # K = max K = 3
    assert mixed.ids.tolist() == [[5, 6, 8]]  # 0.4, 0.24, 0.2 (> 0.16 for id 7)
    np.testing.assert_allclose(np.exp(mixed.logprobs[0]), [0.4, 0.24, 0.2], rtol=1e-6)
    assert mixed.transferred.tolist() == [True]
    zero = mix_rows([wide, narrow], [1.0, 0.0])
    assert zero.ids.tolist() == [[5, 6, 7]]
    assert math.isclose(float(np.exp(zero.logprobs[0]).sum()), 1.0, rel_tol=1e-6)


def test_mix_rows_validation():
    a = SparseRows.one_hot([1, 2], 2)
    with pytest.raises(ValueError, match="weights"):
        mix_rows([a, a], [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        mix_rows([a, a], [1.0, -0.5])
    with pytest.raises(ValueError, match="differ in length"):
        mix_rows([a, SparseRows.one_hot([1], 2)], [0.5, 0.5])


# ------------------------------------------------------------------------------------------
# real tokenizers


SENTENCES = [
    "The wooded area near the river was quiet, and 12 birds sang.",
    "Natalia sold clips to 48 of her friends in April, and then half as many in May.",
    "Unbelievably, the photosynthesis experiment yielded 3.75 grams of glucose per hour.",
    "She didn't know whether the old pamphlets were still in print.",
]


@pytest.mark.models
def test_align_real_tokenizers():
    transformers = pytest.importorskip("transformers")
    from fedcot.models.registry import EMBEDDED, prepare

    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        if not EMBEDDED[name].installed():
            pytest.skip(f"{name} is not installed (run 'make install')")
    smol = transformers.AutoTokenizer.from_pretrained(str(prepare("smollm2-135m-instruct")))
    gemma = transformers.AutoTokenizer.from_pretrained(str(prepare("gemma3-270m")))
    total = matched = 0
    for sentence in SENTENCES:
        a_ids = smol(sentence, add_special_tokens=False)["input_ids"]
        b_ids = gemma(sentence, add_special_tokens=False)["input_ids"]
        a = [smol.decode([i]) for i in a_ids]
        b = [gemma.decode([i]) for i in b_ids]
        path = align_tokens(a, b)
        assert path[0] == (0, 0) and path[-1] == (len(a) - 1, len(b) - 1)
        match = one_to_one(path, len(a), len(b))
        for j, i in enumerate(match):
            if i >= 0:
                assert a[i].strip() == b[j].strip(), (sentence, a[i], b[j])
        total += len(a)
        matched += int((match >= 0).sum())
    assert matched >= 0.5 * total, (matched, total)
