"""Sequence alignment and sparse top-K logit transfer between different tokenizers.

In FedMKT (arXiv 2406.02224) a sender and a receiver with different tokenizers exchange
knowledge on the same public texts. For each public sample the sender sends the token ids
of a *continuation* (the part of the text being learnt) in its own vocabulary and, per
continuation token, one sparse row: the top-K ``(id, log-prob)`` pairs of its predictive
distribution for that token (:func:`continuation_rows`). The receiver tokenises the same
continuation itself, aligns the two token sequences (:func:`align_tokens`) and maps each
one-to-one aligned row through a vocabulary map into its own vocabulary
(:func:`transfer_rows`). Rows of several senders can be mixed (:func:`mix_rows`).

Everything stays sparse: a row holds K ids and K log-probs, never a vocabulary-sized vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from fedcot.train.sparse import SparseRows  # re-exported: the rows this module transfers

__all__ = [
    "SparseRows",
    "align_tokens",
    "continuation_rows",
    "mix_rows",
    "one_to_one",
    "transfer_rows",
]


# --------------------------------------------------------------------------------------------
# Sender side: top-K rows of the continuation tokens


def _topk_numpy(lp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of ``lp`` [n, V] (k <= V), ties broken by lower id."""
    n, v = lp.shape
    thr = np.partition(lp, v - k, axis=1)[:, v - k : v - k + 1]  # k-th largest per row
    chosen = lp >= thr
    crowded = np.nonzero(chosen.sum(axis=1) > k)[0]  # ties at the threshold (rare)
    if crowded.size:
        sub, sub_thr = lp[crowded], thr[crowded]
        greater = sub > sub_thr
        need = k - greater.sum(axis=1, keepdims=True)
        equal = sub == sub_thr
        chosen[crowded] = greater | (equal & (np.cumsum(equal, axis=1) <= need))
    ids = np.nonzero(chosen)[1].reshape(n, k)  # ascending ids within each row
    vals = np.take_along_axis(lp, ids, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable: lower id first among ties
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _topk_torch(lp: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_topk_numpy` for a torch tensor (computed on its device)."""
    import torch

    n = lp.shape[0]
    thr = torch.topk(lp, k, dim=1).values[:, -1:]
    chosen = lp >= thr
    crowded = torch.nonzero(chosen.sum(dim=1) > k)[:, 0]  # ties at the threshold (rare)
    if crowded.numel():
        sub, sub_thr = lp[crowded], thr[crowded]
        greater = sub > sub_thr
        need = k - greater.sum(dim=1, keepdim=True)
        equal = sub == sub_thr
        chosen[crowded] = greater | (equal & (torch.cumsum(equal, dim=1) <= need))
    ids = torch.nonzero(chosen)[:, 1].reshape(n, k)
    vals = torch.gather(lp, 1, ids)
    order = torch.sort(-vals, dim=1, stable=True).indices
    ids = torch.gather(ids, 1, order)
    vals = torch.gather(vals, 1, order)
    return ids.cpu().numpy(), vals.float().cpu().numpy()


_BAD_LOGITS = "logits contain NaN or +inf, or a row that is all -inf"


def continuation_rows(logits: Any, input_ids: Any, start: int, k: int) -> SparseRows:
    """The sparse top-K rows of the continuation tokens ``start..T-1`` of one sequence.

    Args:
        logits: ``[T, V]`` logits of one sequence (torch tensor or numpy array). Logits at
            position ``i`` predict token ``i + 1``.
        input_ids: ``[T]`` token ids of the sequence.
        start: index of the first continuation token; must be >= 1 (token 0 has no
            prediction) and <= T.
        k: entries per row.

    Returns:
        ``T - start`` rows; row ``t`` holds the top-K of ``log_softmax(logits[start + t - 1])``,
        best first, ties broken by lower id. Entries with ``-inf`` log-prob (masked
        vocabulary) become padding; if ``k > V`` the rows are padded. ``transferred`` is True.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    shape = tuple(getattr(input_ids, "shape", (len(input_ids),)))
    if len(shape) != 1:
        raise ValueError(f"input_ids must be 1-D [T], got shape {shape}")
    n_tokens = int(shape[0])
    if len(logits.shape) != 2 or int(logits.shape[0]) != n_tokens:
        raise ValueError(
            f"logits must be [T, V] with T = len(input_ids) = {n_tokens}, "
            f"got shape {tuple(logits.shape)}"
        )
    if start < 1:
        raise ValueError(
            f"start must be >= 1 (the first token has no prediction: logits at position i "
            f"predict token i + 1), got {start}"
        )
    if start > n_tokens:
        raise ValueError(f"start {start} is beyond the sequence length {n_tokens}")
    vocab = int(logits.shape[1])
    n = n_tokens - start
    if n == 0 or vocab == 0:
        return SparseRows(
            np.full((n, k), -1, dtype=np.int64),
            np.full((n, k), -np.inf, dtype=np.float32),
            np.ones(n, dtype=bool),
        )
    k_eff = min(k, vocab)
    if hasattr(logits, "detach"):  # a torch tensor: stay on its device, ship K per row
        import torch

        with torch.no_grad():
            rows = logits.detach()[start - 1 : n_tokens - 1].float()
            if bool(torch.isnan(rows).any()) or not bool(
                torch.isfinite(rows.max(dim=-1).values).all()
            ):
                raise ValueError(_BAD_LOGITS)
            ids, vals = _topk_torch(torch.log_softmax(rows, dim=-1), k_eff)
    else:
        rows = np.asarray(logits, dtype=np.float64)[start - 1 : n_tokens - 1]
        top = np.max(rows, axis=1, keepdims=True)
        if np.isnan(rows).any() or not np.isfinite(top).all():
            raise ValueError(_BAD_LOGITS)
        lp = rows - (np.log(np.sum(np.exp(rows - top), axis=1, keepdims=True)) + top)
        ids, vals = _topk_numpy(lp, k_eff)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_lp = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids[:, :k_eff] = ids
    out_lp[:, :k_eff] = vals
    masked = ~np.isfinite(out_lp)
    out_ids[masked] = -1
    out_lp[masked] = -np.inf
    return SparseRows(out_ids, out_lp, np.ones(n, dtype=bool))


# --------------------------------------------------------------------------------------------
# Alignment of two tokenisations of the same text

_SPACE_MARKERS = ("\u2581", "\u0120")  # SentencePiece "▁", byte-level BPE "Ġ"


def _normalise(text: str) -> str:
    """Leading space markers ("▁", "Ġ") as plain spaces; nothing is stripped."""
    lead = 0
    while lead < len(text) and (text[lead] in _SPACE_MARKERS or text[lead] == " "):
        lead += 1
    return " " * lead + text[lead:].replace("\u2581", " ")


def _spans_in_a(na: Sequence[str], nb: Sequence[str]) -> tuple[np.ndarray, ...]:
    """Character spans ``[start, end)`` of the tokens of a and of b, both in a's text.

    b's characters are placed in a's text by a character-level Levenshtein alignment of the
    two concatenated texts (equal and substituted characters map onto their partners,
    inserted ones onto an empty interval); identical texts map trivially.
    """
    len_a = np.array([len(t) for t in na], dtype=np.float64)
    len_b = np.array([len(t) for t in nb], dtype=np.int64)
    end_a = np.cumsum(len_a)
    start_a = end_a - len_a
    text_a, text_b = "".join(na), "".join(nb)
    if text_a == text_b:
        char_start = np.arange(len(text_b), dtype=np.float64)
        char_end = char_start + 1.0
    else:
        char_start = np.zeros(len(text_b), dtype=np.float64)
        char_end = np.zeros(len(text_b), dtype=np.float64)
        for tag, i1, i2, j1, j2 in Levenshtein.opcodes(text_a, text_b):
            if j2 == j1:
                continue  # characters of a only
            if tag == "insert" or i2 == i1:
                char_start[j1:j2] = char_end[j1:j2] = i1
                continue
            step = (i2 - i1) / (j2 - j1)
            char_start[j1:j2] = i1 + np.arange(j2 - j1) * step
            char_end[j1:j2] = char_start[j1:j2] + step
    end_b = np.cumsum(len_b)
    first = end_b - len_b
    nonempty = len_b > 0
    start_b = np.zeros(len(nb), dtype=np.float64)
    stop_b = np.zeros(len(nb), dtype=np.float64)
    start_b[nonempty] = char_start[first[nonempty]]
    stop_b[nonempty] = char_end[end_b[nonempty] - 1]
    return start_a, end_a, start_b, stop_b


def _cost_matrix(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """float64 ``[len(a), len(b)]`` alignment cost of every token pair (see align_tokens)."""
    na = [_normalise(t) for t in a]
    nb = [_normalise(t) for t in b]
    start_a, end_a, start_b, end_b = _spans_in_a(na, nb)
    overlap = np.minimum(end_a[:, None], end_b[None, :]) - np.maximum(
        start_a[:, None], start_b[None, :]
    )
    lev = cdist(na, nb, scorer=Levenshtein.distance, dtype=np.int64, workers=1)
    return np.where(overlap > 1e-9, -overlap, 1.0 + lev)


def align_tokens(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Align two tokenisations of (roughly) the same text; DTW over token texts.

    Returns a monotone path of ``(i, j)`` pairs from ``(0, 0)`` to ``(len(a)-1, len(b)-1)``
    with steps ``(1, 1)``, ``(1, 0)`` and ``(0, 1)`` minimising the summed pair cost; every
    index of ``a`` and of ``b`` appears in at least one pair. Either sequence empty → ``[]``.

    Token texts are decoded texts (e.g. ``" wooded"``, ``"ed"``); leading space markers
    ("▁", "Ġ") are read as spaces on both sides and nothing is stripped.

    Cost. The Levenshtein distance of a token pair alone is not enough. A piece of a token
    is far (in edit distance) from the whole token: for ``a = [" wood", "ed", " area"]`` and
    ``b = [" wooded", " area"]`` it charges ``"ed"``~``" wooded"`` 5 but ``"ed"``~``" area"``
    only 4, so the path through ``"ed"``~``" area"`` (total 6) beats the right one (total 7).
    And where boundaries cross (``["unbel", "ievable"]`` vs ``["un", "believable"]``) a
    minimum-cost path pairs ``"unbel"``~``"un"`` and ``"ievable"``~``"believable"`` one-to-one
    although neither pair is the same text. The cost therefore works on character positions:

    * each token gets its character span in the concatenated text of its sequence; b's
      characters are placed in a's text by a character-level Levenshtein alignment of the two
      concatenated texts (trivial when they are equal);
    * a pair whose spans overlap by ``o > 0`` characters costs ``-o`` (a reward);
    * a pair that does not overlap costs ``1 + Levenshtein(a_i, b_j)``.

    For two tokenisations of the same text the pairs that overlap form a monotone staircase
    from the first to the last pair, which collects every reward and nothing else, so the
    optimal path is exactly the set of overlapping pairs: a token split in pieces aligns all
    pieces with the whole token, crossing boundaries give a many-to-many chain, and a pair is
    one-to-one only if both tokens cover the same characters. Where the texts differ
    (e.g. byte pieces decoded as "�"), tokens without a counterpart join a neighbour, the
    token-level Levenshtein distance picking which one.

    Ties between predecessors are broken deterministically: the diagonal step first, then
    ``(1, 0)`` (advance in ``a``), then ``(0, 1)`` (advance in ``b``). Runs in
    ``O(len(a) * len(b))`` time and memory (anti-diagonals vectorised with numpy), plus the
    character alignment when the texts differ.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return []
    cost = _cost_matrix(a, b)
    # acc[i + 1, j + 1] is the best summed cost of a path from (0, 0) to (i, j); the padding
    # row/column is +inf except acc[0, 0] = 0, so (0, 0) "comes diagonally" from nowhere.
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    choice = np.zeros((n, m), dtype=np.int8)  # 0 diagonal, 1 from (i-1, j), 2 from (i, j-1)
    for d in range(n + m - 1):
        ii = np.arange(max(0, d - m + 1), min(n - 1, d) + 1)
        jj = d - ii
        prev = np.stack([acc[ii, jj], acc[ii, jj + 1], acc[ii + 1, jj]])
        best = np.argmin(prev, axis=0)  # first minimum: the tie-break order above
        choice[ii, jj] = best
        acc[ii + 1, jj + 1] = cost[ii, jj] + prev[best, np.arange(ii.shape[0])]
    i, j = n - 1, m - 1
    path = [(i, j)]
    while i > 0 or j > 0:
        step = choice[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
        path.append((i, j))
    path.reverse()
    return path


def one_to_one(path: Sequence[tuple[int, int]], len_a: int, len_b: int) -> np.ndarray:
    """int64 ``[len_b]``: for each b index, its a index where the pair is one-to-one, else -1.

    A pair ``(i, j)`` is one-to-one when ``i`` occurs in no other pair of ``path`` and ``j``
    occurs in no other pair.
    """
    out = np.full(len_b, -1, dtype=np.int64)
    if not path:
        return out
    pairs = np.asarray(path, dtype=np.int64).reshape(-1, 2)
    if pairs[:, 0].min() < 0 or pairs[:, 0].max() >= len_a:
        raise ValueError(f"path has a indices outside [0, {len_a})")
    if pairs[:, 1].min() < 0 or pairs[:, 1].max() >= len_b:
        raise ValueError(f"path has b indices outside [0, {len_b})")
    count_a = np.bincount(pairs[:, 0], minlength=len_a)
    count_b = np.bincount(pairs[:, 1], minlength=len_b)
    single = (count_a[pairs[:, 0]] == 1) & (count_b[pairs[:, 1]] == 1)
    out[pairs[single, 1]] = pairs[single, 0]
    return out


# --------------------------------------------------------------------------------------------
# Receiver side: sparse rows in the learner's vocabulary


def _merge_topk(
    row: np.ndarray, ids: np.ndarray, logw: np.ndarray, n: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge sparse entries ``(row, id, log-weight)`` into ``n`` rows of the top ``k``.

    Entries with the same ``(row, id)`` are merged by log-sum-exp; entries with a negative id
    or a non-finite log-weight are dropped. Per row the ``k`` largest are kept, best first,
    ties broken by lower id. Returns ids ``[n, k]``, log-weights ``[n, k]`` (padding -1 /
    -inf) and bool ``[n]`` (row has at least one entry).
    """
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_lp = np.full((n, k), -np.inf, dtype=np.float32)
    keep = (ids >= 0) & np.isfinite(logw)
    row, ids, logw = row[keep], ids[keep], logw[keep].astype(np.float64)
    if row.size == 0:
        return out_ids, out_lp, np.zeros(n, dtype=bool)
    shift = np.full(n, -np.inf)
    np.maximum.at(shift, row, logw)
    weight = np.exp(logw - shift[row])
    base = int(ids.max()) + 1
    uniq, inverse = np.unique(row * base + ids, return_inverse=True)
    total = np.bincount(inverse.reshape(-1), weights=weight, minlength=uniq.shape[0])
    urow, uid = uniq // base, uniq % base
    with np.errstate(divide="ignore"):
        ulog = np.log(total) + shift[urow]
    good = np.isfinite(ulog)
    urow, uid, ulog = urow[good], uid[good], ulog[good]
    order = np.lexsort((uid, -ulog, urow))  # by row, then larger value, then lower id
    urow, uid, ulog = urow[order], uid[order], ulog[order]
    rank = np.arange(urow.shape[0]) - np.searchsorted(urow, urow, side="left")
    top = rank < k
    out_ids[urow[top], rank[top]] = uid[top]
    out_lp[urow[top], rank[top]] = ulog[top]
    has = np.zeros(n, dtype=bool)
    has[urow] = True
    return out_ids, out_lp, has


def transfer_rows(
    teacher_texts: Sequence[str],
    teacher_rows: SparseRows,
    learner_texts: Sequence[str],
    learner_ids: Sequence[int] | np.ndarray,
    vocab_map: np.ndarray,
    k: int | None = None,
) -> SparseRows:
    """The teacher's rows carried into the learner's vocabulary, one per learner token.

    Args:
        teacher_texts: decoded texts of the teacher's continuation tokens.
        teacher_rows: the teacher's rows, one per teacher continuation token.
        learner_texts: decoded texts of the learner's continuation tokens (same text).
        learner_ids: the learner's continuation token ids.
        vocab_map: int ``[V_teacher]``, teacher id → learner id (-1 = no counterpart).
        k: entries per output row (default: the teacher's K).

    Where learner token ``t`` is aligned one-to-one with teacher token ``j``
    (:func:`align_tokens`, :func:`one_to_one`), the row is ``teacher_rows[j]`` mapped through
    ``vocab_map``: ids outside the map or mapped to -1 are dropped, ids that land on the same
    learner id are merged by log-sum-exp of their probabilities, the top ``k`` are kept
    (ties: lower id) and the row is padded; ``transferred`` is True. Log-probs keep the
    teacher's scale (not renormalised over the kept entries; :meth:`SparseRows.probs`
    renormalises). Otherwise (no one-to-one match, the teacher row is itself a one-hot
    fallback, or nothing survives the mapping) the row is one-hot on ``learner_ids[t]`` with
    ``transferred`` False.
    """
    if len(teacher_texts) != len(teacher_rows):
        raise ValueError(
            f"len(teacher_texts) = {len(teacher_texts)} != len(teacher_rows) = {len(teacher_rows)}"
        )
    learner = np.asarray(learner_ids, dtype=np.int64).reshape(-1)
    if len(learner_texts) != learner.shape[0]:
        raise ValueError(
            f"len(learner_texts) = {len(learner_texts)} != len(learner_ids) = {learner.shape[0]}"
        )
    vmap = np.asarray(vocab_map)
    if vmap.ndim != 1 or not np.issubdtype(vmap.dtype, np.integer):
        raise ValueError(f"vocab_map must be a 1-D integer array, got {vmap.dtype} {vmap.shape}")
    vmap = vmap.astype(np.int64)
    k_out = teacher_rows.k if k is None else int(k)
    if k_out < 1:
        raise ValueError(f"k must be >= 1, got {k_out}")
    n = learner.shape[0]
    path = align_tokens(teacher_texts, learner_texts)
    match = one_to_one(path, len(teacher_texts), n)
    usable = match >= 0
    usable[usable] = teacher_rows.transferred[match[usable]]
    rows_t = np.nonzero(usable)[0]
    src = teacher_rows.ids[match[rows_t]]  # [r, K_teacher]
    src_lp = teacher_rows.logprobs[match[rows_t]]
    mapped = np.full_like(src, -1)
    in_map = (src >= 0) & (src < vmap.shape[0])
    mapped[in_map] = vmap[src[in_map]]
    row_index = np.broadcast_to(rows_t[:, None], src.shape)
    ids, lp, has = _merge_topk(row_index.ravel(), mapped.ravel(), src_lp.ravel(), n, k_out)
    fallback = SparseRows.one_hot(learner, k_out)
    ids = np.where(has[:, None], ids, fallback.ids)
    lp = np.where(has[:, None], lp, fallback.logprobs)
    return SparseRows(ids, lp, has)


def mix_rows(rows: Sequence[SparseRows], weights: np.ndarray | Sequence[float]) -> SparseRows:
    """The weighted mixture of several row sets over the same (learner) positions.

    Per position the mixture ``sum_m weights[m] * p_m`` is formed over the union of ids,
    ``p_m`` being row set ``m``'s distribution renormalised over its K entries
    (:meth:`SparseRows.probs`); the top K of the mixture are kept (K = the largest K of the
    inputs; ties: lower id) with the log of their mixture probability. Weights must be
    finite and non-negative and are used as given (not renormalised). ``transferred`` is
    True where any input row is transferred. A position where no entry has positive mixture
    probability stays all padding.
    """
    if not rows:
        raise ValueError("mix_rows needs at least one row set")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != len(rows):
        raise ValueError(f"{len(rows)} row sets but {w.shape[0]} weights")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    n = len(rows[0])
    if any(len(r) != n for r in rows):
        raise ValueError(f"row sets differ in length: {[len(r) for r in rows]}")
    k = max(r.k for r in rows)
    all_row, all_ids, all_logw = [], [], []
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    for r, lw in zip(rows, log_w):
        all_row.append(np.broadcast_to(np.arange(n)[:, None], r.ids.shape).ravel())
        all_ids.append(r.ids.ravel())
        all_logw.append((r.log_probs_normalised() + lw).ravel())
    ids, lp, _ = _merge_topk(
        np.concatenate(all_row), np.concatenate(all_ids), np.concatenate(all_logw), n, k
    )
    transferred = np.any(np.stack([r.transferred for r in rows]), axis=0)
    return SparseRows(ids, lp, transferred)
