"""Minimum-edit-distance (MinED) vocabulary mapping between two tokenizers.

FedMKT aligns the logits of models with different vocabularies by mapping every token id
of one vocabulary to the token of the other whose text is nearest in Levenshtein distance.
Token texts are compared as real text (``Ġthe`` and ``▁the`` both become ``" the"``; byte
fragments of a UTF-8 character become the same lone-surrogate string in both families), so
the same text in two vocabularies matches exactly.

The search is exact and pruned, in phases:

1. exact text matches (a dict lookup: the lowest target id of each text);
2. distance 1 by hash lookups (:class:`_OneEditIndex`: one deletion from the query, from
   the candidate, or at the same position from both), when enough queries are left for the
   index to pay for itself;
3. the rest, iterative deepening over lower bounds ``d = 0, 1, 2, ...``. Candidates are
   bucketed by length ``ℓ`` and by class (ASCII only; up to U+07FF; the rest). With ``u`` the
   number of query characters that no candidate of a class contains, at most
   ``min(ℓ, L - u)`` characters of a query of length ``L`` can be aligned as matches, so its
   distance to any candidate of that bucket is at least ``max(L, ℓ) - min(ℓ, L - u)``
   (``|L - ℓ|`` when ``u = 0``; Levenshtein is never below the length difference). At level
   ``d`` each open query is compared with the buckets whose bound for it is ``d``; after
   level ``d`` a query whose best distance is ``≤ d`` is closed, since everything it has not
   seen is at least ``d + 1`` away. Buckets are scanned in id order in chunks, so a query
   with a candidate at distance ``d`` already only looks at lower ids at level ``d`` (ties
   go to the lowest target id). Each chunk is one ``rapidfuzz.process.cdist`` call over
   queries of one length (SIMD across queries) with a score cutoff at the largest best
   distance of the queries still looking; batches of queries run in parallel threads.

Maps are cached on disk under a name keyed by both tokenizer hashes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedcot.models.registry import fedcot_home
from fedcot.progress import progress_bar

__all__ = [
    "VocabMap",
    "brute_force_min_distance",
    "build_vocab_map",
    "byte_level_alphabet",
    "min_distance_search",
    "token_strings",
    "tokenizer_hash",
    "vocab_map_path",
    "vocab_maps",
]

#: Bumped whenever the mapping algorithm or the token-string rules change (part of the
#: cache key, so a stale map is never loaded).
FORMAT_VERSION = 1

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_REPLACEMENT = "\ufffd"
_CHUNK = 4096  # candidates per cdist call
_BATCH = 2048  # queries per task
# Candidate classes by largest code point (ASCII; up to U+07FF: Latin, Greek, Cyrillic,
# Arabic, ...; the rest): a query character that no candidate of a class has cannot be
# matched there, which tightens the lower bound for that class.
_CLASS_LIMITS = (0x80, 0x800)
_CLASSES = range(len(_CLASS_LIMITS) + 1)
_BRUTE_CELLS = 2**25  # query × candidate cells per brute-force block (128 MiB of int32)


# -- token strings ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: the character standing for each byte, mapped to the byte.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for
    themselves; the other 68 bytes get ``chr(256 + n)`` in increasing byte order (so the
    space 0x20 is ``Ġ`` and the newline 0x0A is ``Ċ``).
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    keep = set(printable)
    table: dict[str, int] = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + n)] = b
            n += 1
    return table


def _piece_bytes(piece: str) -> bytes | None:
    """The bytes a piece stands for, when it is a byte-fallback or byte-level piece."""
    m = _BYTE_PIECE.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    table = byte_level_alphabet()
    if piece and all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return None


def _pieces_and_decoder(
    tokenizer: Any,
) -> tuple[list[str | None], Callable[[str], str], str | None]:
    """(piece of each id, piece → decoded text, a description of the decoder or None)."""
    backend = tokenizer if hasattr(tokenizer, "id_to_token") else None
    if backend is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.get_vocab_size(with_added_tokens=True) < len(tokenizer):
            backend = None  # a wrapper with tokens its backend does not know: use the wrapper
    if backend is not None:
        size = backend.get_vocab_size(with_added_tokens=True)
        pieces: list[str | None] = [backend.id_to_token(i) for i in range(size)]
        decoder = backend.decoder

        def to_string(piece: str) -> str:
            return decoder.decode([piece]) if decoder is not None else piece

        return pieces, to_string, repr(decoder)
    pieces = list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))

    def to_string_slow(piece: str) -> str:
        return tokenizer.convert_tokens_to_string([piece])

    return pieces, to_string_slow, None


def token_strings(tokenizer: Any) -> list[str]:
    """The text each token id ``0..N-1`` stands for (``N`` includes added tokens).

    Generic over tokenizer families: each piece goes through the tokenizer's own decoder, so
    byte-level forms (``Ġthe``, ``Ã©``) and SentencePiece ``▁the`` become real text with a
    leading space for a word start (SentencePiece decoders drop the space of a first piece;
    it is restored when the piece starts with ``▁``). A piece that stands for part of a
    UTF-8 character (the decoder yields U+FFFD although the piece is not ``�`` itself) keeps
    its bytes: ``<0xHH>`` byte-fallback pieces (whenever the decoder interpreted them) and
    pieces written in the byte-level alphabet are turned back into bytes and decoded with
    ``errors="surrogateescape"``, so the same byte gives the same string in both families
    (``"\\udcc3"`` for a lone 0xC3). Accepts a transformers tokenizer or a
    ``tokenizers.Tokenizer``; ids without a piece give ``""``.
    """
    pieces, to_string, _ = _pieces_and_decoder(tokenizer)
    out: list[str] = []
    for piece in pieces:
        if piece is None:
            out.append("")
            continue
        text = to_string(piece)
        if text != piece and _BYTE_PIECE.fullmatch(piece):
            # a byte-fallback piece the decoder interpreted: its byte, even where the
            # decoder made it U+FFFD or stripped it (a lone space at the start)
            text = bytes([int(piece[3:5], 16)]).decode("utf-8", errors="surrogateescape")
        elif _REPLACEMENT in text and piece != _REPLACEMENT:
            raw = _piece_bytes(piece)
            if raw is not None:
                text = raw.decode("utf-8", errors="surrogateescape")
        if piece.startswith("▁") and not text.startswith(" "):
            text = " " + text
        out.append(text)
    return out


def _hash_strings(strings: Sequence[str | None], extra: str = "") -> str:
    h = hashlib.sha256()
    h.update(f"fedcot-vocab:{len(strings)}:{extra}\n".encode("utf-8", errors="surrogatepass"))
    for s in strings:
        raw = b"" if s is None else s.encode("utf-8", errors="surrogatepass")
        h.update(len(raw).to_bytes(4, "little"))
        h.update(raw)
    return h.hexdigest()[:16]


def tokenizer_hash(tokenizer: Any) -> str:
    """A stable 16-hex-digit hash of what the tokenizer's ids stand for.

    For a tokenizer with a ``tokenizers`` backend: the sha256 of its pieces in id order
    (length-prefixed) and of its decoder's description, so it covers the vocabulary and the
    decoding without decoding every piece (fast enough to key a cache). Other tokenizers
    hash the texts of :func:`token_strings`.
    """
    pieces, _, decoder = _pieces_and_decoder(tokenizer)
    if decoder is None:
        return _hash_strings(token_strings(tokenizer), "strings")
    return _hash_strings(pieces, "pieces|" + decoder)


# -- the map ---------------------------------------------------------------------------------
@dataclass(eq=False)
class VocabMap:
    """For each source token id, the nearest target token id and its edit distance.

    ``timings`` (seconds per phase of the build; empty when loaded from disk) is not saved.
    """

    source_hash: str
    target_hash: str
    ids: np.ndarray
    distance: np.ndarray
    timings: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int32)
        self.distance = np.ascontiguousarray(self.distance, dtype=np.int32)
        if self.ids.shape != self.distance.shape or self.ids.ndim != 1:
            raise ValueError("ids and distance must be 1-D arrays of the same length")

    def __eq__(self, other: object) -> bool:
        """Same hashes and the same arrays (``timings`` do not count)."""
        if not isinstance(other, VocabMap):
            return NotImplemented
        return (
            (self.source_hash, self.target_hash) == (other.source_hash, other.target_hash)
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self.distance, other.distance)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays

    def __len__(self) -> int:
        """The source vocabulary size."""
        return int(self.ids.shape[0])

    def map(self, ids: np.ndarray) -> np.ndarray:
        """Target ids for an array of source ids (any shape); ids outside the vocab give -1."""
        arr = np.asarray(ids)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        out = np.full(arr.shape, -1, dtype=np.int32)
        ok = (arr >= 0) & (arr < len(self))
        out[ok] = self.ids[arr[ok]]
        return out

    @property
    def exact_share(self) -> float:
        """Share of source tokens whose text occurs verbatim in the target (distance 0)."""
        return float(np.mean(self.distance == 0)) if len(self) else 0.0

    @property
    def within1_share(self) -> float:
        """Share of source tokens mapped at edit distance 0 or 1."""
        return float(np.mean(self.distance <= 1)) if len(self) else 0.0

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` file atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    source_hash=np.array(self.source_hash),
                    target_hash=np.array(self.target_hash),
                    ids=self.ids,
                    distance=self.distance,
                    format_version=np.array(FORMAT_VERSION),
                )
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache file need not be
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VocabMap:
        """Read a map written by :meth:`save`."""
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(
                source_hash=str(z["source_hash"]),
                target_hash=str(z["target_hash"]),
                ids=z["ids"],
                distance=z["distance"],
            )


# -- search ----------------------------------------------------------------------------------
def _n_workers(workers: int) -> int:
    return max(1, os.cpu_count() or 1) if workers < 0 else max(1, workers)


def brute_force_min_distance(
    queries: Sequence[str], candidates: Sequence[str], workers: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive reference: (min distance, lowest candidate id at it) for each query.

    Every query is compared with every candidate (no pruning, no cutoff).
    """
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    if not candidates:
        raise ValueError("no candidates")
    queries, candidates = list(queries), list(candidates)
    dist = np.empty(len(queries), dtype=np.int32)
    ids = np.empty(len(queries), dtype=np.int32)
    step = max(1, _BRUTE_CELLS // len(candidates))
    for s in range(0, len(queries), step):
        block = cdist(
            queries[s : s + step],
            candidates,
            scorer=Levenshtein.distance,
            workers=workers,
            dtype=np.int32,
        )
        j = block.argmin(axis=1)  # first (lowest id) minimum
        ids[s : s + step] = j
        dist[s : s + step] = block[np.arange(len(j)), j]
    return dist, ids


def _lower_bound(q_len: int, foreign: np.ndarray | int, lengths: np.ndarray) -> np.ndarray:
    """Edit-distance lower bounds from a query to candidates of each length.

    At most ``min(ℓ, L - u)`` characters can be aligned as matches (``u`` foreign
    characters of the query occur in no candidate), and the distance is at least
    ``max(L, ℓ)`` minus the matches.
    """
    return np.where(
        lengths <= q_len - foreign,
        q_len - lengths,
        foreign + np.maximum(0, lengths - q_len),
    )


class _OneEditIndex:
    """Finds, by hash lookups, the lowest candidate id at edit distance exactly 1.

    A candidate one edit away from a query (that is not itself a candidate) is one
    character shorter (the query minus a character is a candidate), one longer (the
    candidate minus a character is the query), or of equal length and equal once the same
    position is deleted from both (a substitution).
    """

    def __init__(self, candidates: Sequence[str], exact: dict[str, int]) -> None:
        self.exact = exact  # text → lowest id
        self.longer: dict[str, int] = {}  # candidate minus one char → lowest id
        self.same: list[dict[str, int]] = []  # per position: candidate minus it → lowest id
        longer, same = self.longer, self.same
        for j, c in enumerate(candidates):
            n = len(c)
            while len(same) < n:
                same.append({})
            for i in range(n):
                v = c[:i] + c[i + 1 :]
                longer.setdefault(v, j)
                same[i].setdefault(v, j)

    def lowest(self, q: str) -> int:
        """The lowest candidate id at distance 1 from ``q``, or -1."""
        best = self.longer.get(q, -1)
        exact, same = self.exact, self.same
        for i in range(len(q)):
            v = q[:i] + q[i + 1 :]
            j = exact.get(v, -1)
            if j >= 0 and (best < 0 or j < best):
                best = j
            if i < len(same):
                j = same[i].get(v, -1)
                if j >= 0 and (best < 0 or j < best):
                    best = j
        return best


@dataclass
class _Buckets:
    """Candidates split by (length, class), each bucket's ids ascending, with its strings."""

    lengths: np.ndarray  # per bucket
    classes: np.ndarray  # per bucket
    ids: list[np.ndarray]
    strings: list[list[str]]


def _make_buckets(candidates: list[str]) -> tuple[_Buckets, list[set[str]]]:
    """Bucket the candidates; also the alphabet (set of characters) of each class."""
    n = len(candidates)
    c_len = np.fromiter(map(len, candidates), dtype=np.int64, count=n)
    tops = np.fromiter((ord(max(c)) if c else 0 for c in candidates), dtype=np.int64, count=n)
    c_cls = np.searchsorted(np.array(_CLASS_LIMITS), tops, side="right")
    key = c_len * (len(_CLASS_LIMITS) + 1) + c_cls
    order = np.argsort(key, kind="stable")  # ids ascending inside each bucket
    starts = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
    ends = np.r_[starts[1:], n]
    ids = [order[s:e].astype(np.int32) for s, e in zip(starts, ends)]
    buckets = _Buckets(
        lengths=c_len[order[starts]],
        classes=c_cls[order[starts]],
        ids=ids,
        strings=[[candidates[j] for j in b] for b in ids],
    )
    alphabets = [set("".join(candidates[j] for j in np.flatnonzero(c_cls == k))) for k in _CLASSES]
    return buckets, alphabets


def _search_batch(
    queries: list[str],
    foreign: np.ndarray,
    buckets: _Buckets,
    bound_slack: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(best distance, lowest id at it, distances computed) for queries of one length.

    ``foreign[r, k]``: characters of query ``r`` that no candidate of class ``k`` has.
    Level by level (d = 0, 1, ...), each bucket is compared with the open queries whose
    lower bound for it is ``d``; after level ``d`` a query with best ``≤ d`` is closed.
    """
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    n = len(queries)
    q_len = len(queries[0])
    # lower bound per (query, bucket)
    lb = _lower_bound(q_len, foreign[:, buckets.classes], buckets.lengths[None, :]) + bound_slack
    big = np.iinfo(np.int32).max
    best = np.full(n, big, dtype=np.int64)
    best_id = np.full(n, big, dtype=np.int64)
    open_ = np.ones(n, dtype=bool)
    computed = 0
    for level in np.unique(lb):
        at_level = open_[:, None] & (lb == level)
        for k in np.flatnonzero(at_level.any(axis=0)):
            ids, strings = buckets.ids[k], buckets.strings[k]
            for s in range(0, len(ids), _CHUNK):
                chunk = ids[s : s + _CHUNK]
                # Still looking here: best above this level, or a tie at it with a
                # higher id than this chunk starts at (ids ascend in a bucket).
                rows = np.flatnonzero(
                    at_level[:, k] & open_ & ((best > level) | (best_id > chunk[0]))
                )
                if rows.size == 0:
                    break
                cutoff = int(best[rows].max())
                block = cdist(
                    [queries[i] for i in rows],
                    strings[s : s + _CHUNK],
                    scorer=Levenshtein.distance,
                    score_cutoff=None if cutoff >= big else cutoff,
                    workers=1,
                    dtype=np.int32,
                )
                computed += block.size
                col = block.argmin(axis=1)  # lowest id of the chunk at the row minimum
                d = block[np.arange(rows.size), col].astype(np.int64)
                cid = chunk[col].astype(np.int64)
                better = (d < best[rows]) | ((d == best[rows]) & (cid < best_id[rows]))
                best[rows[better]] = d[better]
                best_id[rows[better]] = cid[better]
        open_ &= best > level  # every bucket of a later level is at least level + 1 away
        if not open_.any():
            break
    return best.astype(np.int32), best_id.astype(np.int32), computed


def _exact_matches(
    queries: list[str], candidates: list[str], dist: np.ndarray, ids: np.ndarray
) -> tuple[dict[str, int], list[int]]:
    """Phase 1: the queries whose text is a candidate get distance 0 and its lowest id.

    Writes those into ``dist`` and ``ids``; returns the lowest id of each candidate text and
    the indices of the queries left.
    """
    first: dict[str, int] = {}
    for j, c in enumerate(candidates):
        first.setdefault(c, j)
    rest: list[int] = []
    for i, q in enumerate(queries):
        j = first.get(q)
        if j is None:
            rest.append(i)
        else:
            ids[i], dist[i] = j, 0
    return first, rest


def _one_edit_matches(
    queries: list[str],
    candidates: list[str],
    first: dict[str, int],
    rest: list[int],
    dist: np.ndarray,
    ids: np.ndarray,
) -> list[int]:
    """Phase 2: the ``rest`` queries one edit from a candidate, by hash lookups.

    Writes distance 1 and the lowest such id into ``dist`` and ``ids``; returns the indices of
    the queries left. The index is freed on return.
    """
    index = _OneEditIndex(candidates, first)
    left: list[int] = []
    for i in rest:
        j = index.lowest(queries[i])
        if j < 0:
            left.append(i)
        else:
            ids[i], dist[i] = j, 1
    return left


def _query_batches(
    queries: list[str], rest: list[int], alphabets: list[set[str]]
) -> list[tuple[list[int], np.ndarray]]:
    """Phase 3: the ``rest`` queries in batches of one length, biggest batches first.

    Each batch comes with its ``foreign`` counts: per query and candidate class, the number
    of the query's characters that the class lacks altogether (it tightens the lower bound).
    """
    by_len: dict[int, list[int]] = defaultdict(list)
    for i in rest:
        by_len[len(queries[i])].append(i)
    tasks: list[tuple[list[int], np.ndarray]] = []
    for members in by_len.values():
        for s in range(0, len(members), _BATCH):
            part = members[s : s + _BATCH]
            foreign = np.array(
                [[sum(ch not in a for ch in queries[i]) for a in alphabets] for i in part],
                dtype=np.int64,
            )
            tasks.append((part, foreign))
    tasks.sort(key=lambda t: -len(t[0]))  # big batches first: the pool ends evenly
    return tasks


def _level_search(
    queries: list[str],
    tasks: list[tuple[list[int], np.ndarray]],
    buckets: _Buckets,
    dist: np.ndarray,
    ids: np.ndarray,
    advance: Callable[[int], Any],
    *,
    workers: int,
    bound_slack: int,
) -> int:
    """Phase 4: :func:`_search_batch` over the batches in parallel threads.

    ``cdist`` releases the GIL. Writes each batch's result into ``dist`` and ``ids`` and
    calls ``advance`` with its size as it finishes; returns the distances computed.
    """
    computed = 0
    with ThreadPoolExecutor(max_workers=_n_workers(workers)) as pool:
        futures = {
            pool.submit(
                _search_batch, [queries[i] for i in members], foreign, buckets, bound_slack
            ): members
            for members, foreign in tasks
        }
        for fut in as_completed(futures):
            members = futures[fut]
            d, j, n = fut.result()
            dist[members], ids[members] = d, j
            computed += n
            advance(len(members))
    return computed


def min_distance_search(
    queries: Sequence[str],
    candidates: Sequence[str],
    *,
    workers: int = -1,
    progress: bool = False,
    description: str = "MinED",
    one_edit_index: bool | None = None,
    stats: dict[str, float] | None = None,
    _bound_slack: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(min distance, lowest candidate id at it) per query: the pruned exact search.

    Gives the same answer as :func:`brute_force_min_distance`. Phases: exact text matches;
    distance-1 matches by hash lookups (``one_edit_index``; default: when the queries left
    are at least a quarter as many as the candidates, so the index pays for itself);
    the ring search for the rest, ``workers`` threads (-1: all cores) each running
    single-threaded ``cdist`` calls on batches of queries. ``stats``, when given, receives
    seconds per phase and counts. ``_bound_slack`` is added to every lower bound: it breaks
    the pruning on purpose (tests show that the brute-force comparison catches it).
    """
    if not candidates:
        raise ValueError("no candidates")
    t0 = time.perf_counter()
    queries, candidates = list(queries), list(candidates)
    dist = np.full(len(queries), -1, dtype=np.int32)
    ids = np.full(len(queries), -1, dtype=np.int32)

    first, rest = _exact_matches(queries, candidates, dist, ids)
    n_exact = len(queries) - len(rest)
    t1 = time.perf_counter()

    if one_edit_index is None:
        one_edit_index = 4 * len(rest) >= len(candidates)
    n_one = 0
    if one_edit_index and rest:
        left = _one_edit_matches(queries, candidates, first, rest, dist, ids)
        n_one = len(rest) - len(left)
        rest = left
    t2 = time.perf_counter()

    # Candidates bucketed by (length, class: ASCII, up to U+07FF, the rest).
    buckets, alphabets = _make_buckets(candidates)
    tasks = _query_batches(queries, rest, alphabets)
    t3 = time.perf_counter()

    with progress_bar(len(rest), description, enabled=progress) as advance:
        computed = _level_search(
            queries, tasks, buckets, dist, ids, advance, workers=workers, bound_slack=_bound_slack
        )
    t4 = time.perf_counter()
    if stats is not None:
        stats.update(
            exact_s=t1 - t0,
            one_edit_s=t2 - t1,
            group_s=t3 - t2,
            search_s=t4 - t3,
            total_s=t4 - t0,
            queries=float(len(queries)),
            exact=float(n_exact),
            one_edit=float(n_one),
            searched=float(len(rest)),
            distances_computed=float(computed),
        )
    return dist, ids


# -- tokenizer maps --------------------------------------------------------------------------
def _default_cache_dir() -> Path:
    return fedcot_home() / "vocab_maps"


def _cache_path(cache_dir: Path, source_hash: str, target_hash: str) -> Path:
    return cache_dir / f"mined-v{FORMAT_VERSION}-{source_hash}-to-{target_hash}.npz"


def vocab_map_path(
    source_tokenizer: Any, target_tokenizer: Any, cache_dir: Path | None = None
) -> Path:
    """Where :func:`build_vocab_map` caches the map between these tokenizers."""
    base = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    return _cache_path(base, tokenizer_hash(source_tokenizer), tokenizer_hash(target_tokenizer))


def build_vocab_map(
    source_tokenizer: Any,
    target_tokenizer: Any,
    *,
    cache_dir: Path | None = None,
    workers: int = -1,
    progress: bool = False,
) -> VocabMap:
    """The MinED map from every source token id to its nearest target token id.

    Tokenizers are anything :func:`token_strings` accepts. Ties at the minimum distance go
    to the lowest target id. The map is cached in ``cache_dir`` (default
    ``fedcot_home()/vocab_maps``) under both tokenizer hashes; a cached map loads without
    decoding a single token. ``timings`` on the result holds seconds per phase.
    """
    t0 = time.perf_counter()
    src_hash, tgt_hash = tokenizer_hash(source_tokenizer), tokenizer_hash(target_tokenizer)
    base = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = _cache_path(base, src_hash, tgt_hash)
    t1 = time.perf_counter()
    if path.is_file():
        try:
            cached: VocabMap | None = VocabMap.load(path)
        except (OSError, ValueError, KeyError):
            cached = None  # unreadable: rebuild and overwrite
        if cached is not None and (cached.source_hash, cached.target_hash) == (
            src_hash,
            tgt_hash,
        ):
            cached.timings = {"hash_s": t1 - t0, "load_s": time.perf_counter() - t1}
            return cached
    src, tgt = token_strings(source_tokenizer), token_strings(target_tokenizer)
    t2 = time.perf_counter()
    stats: dict[str, float] = {}
    dist, ids = min_distance_search(
        src, tgt, workers=workers, progress=progress, description="vocab map", stats=stats
    )
    vmap = VocabMap(src_hash, tgt_hash, ids, dist)
    t3 = time.perf_counter()
    vmap.save(path)
    vmap.timings = {
        "hash_s": t1 - t0,
        "strings_s": t2 - t1,
        **stats,
        "save_s": time.perf_counter() - t3,
    }
    vmap.timings["total_s"] = time.perf_counter() - t0
    return vmap


def vocab_maps(tokenizer_a: Any, tokenizer_b: Any, **kw: Any) -> tuple[VocabMap, VocabMap]:
    """Both MinED maps: (a → b, b → a). Keyword arguments go to :func:`build_vocab_map`."""
    return build_vocab_map(tokenizer_a, tokenizer_b, **kw), build_vocab_map(
        tokenizer_b, tokenizer_a, **kw
    )
