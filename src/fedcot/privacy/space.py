"""The embedding space the word mechanisms draw from.

Candidate set V and vectors e_v come from a client model's input-embedding matrix: each
token that decodes to a whole word (its text starts a word) is a candidate; a word outside V
(a name split into several tokens, say) gets the mean of its token vectors, so it still goes
through the mechanism, and it can never come out verbatim. Norms are precomputed so a
batch of distances is one matrix product; the top-K neighbour sets of the CusText-style
variant are computed on demand and cached (or all at once with :meth:`neighbour_table`).

Utility is u(x, y) = -min(‖e_x - e_y‖, D) / D with D an upper bound on the diameter of V, so
u ∈ [-1, 0] for every pair and the sensitivity Δu ≤ 1 holds by construction, also for
words outside V.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from fedcot.errors import ConfigError
from fedcot.models.registry import prepare

VocabFilter = Literal["words", "all"]
EmbedFn = Callable[[str], np.ndarray]

_CHUNK = 256  # query rows per distance block: 256 × 49k float32 = 50 MB


@dataclass
class EmbeddingSpace:
    """Candidates (``words``) with their vectors, norms and a diameter bound.

    ``embed_fn`` maps a string that is not a candidate to a vector (the mean of its token
    vectors for spaces built from a model); without it, a unit outside the candidate set is
    an error rather than a silent guess.
    """

    words: list[str]
    vectors: np.ndarray
    embed_fn: EmbedFn | None = None
    name: str = "space"
    build_seconds: float = 0.0
    sq_norms: np.ndarray = field(init=False, repr=False)
    diameter: float = field(init=False)
    index: dict[str, int] = field(init=False, repr=False)
    _extra: dict[str, np.ndarray] = field(init=False, repr=False, default_factory=dict)
    _neighbours: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if len(self.words) != len(self.vectors):
            raise ValueError("words and vectors differ in length")
        if len(self.words) < 2:
            raise ConfigError(
                "an embedding space needs at least two candidates",
                hint="check the vocabulary filter",
            )
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.sq_norms = np.einsum("ij,ij->i", self.vectors, self.vectors)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("candidate words must be distinct")
        # Twice the largest distance to the centroid bounds the diameter from above; the
        # exact diameter needs all n² pairs, and an upper bound keeps Δu ≤ 1 just the same.
        centre = self.vectors.mean(axis=0)
        self.diameter = float(2 * np.sqrt(((self.vectors - centre) ** 2).sum(axis=1).max()))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def fingerprint(self) -> str:
        """A hash of candidates and vectors (keys caches of neighbour tables)."""
        h = hashlib.sha256()
        h.update("\n".join(self.words).encode())
        h.update(self.vectors.tobytes())
        return h.hexdigest()[:16]

    # -- vectors -------------------------------------------------------------------------
    def key(self, text: str) -> str:
        """The candidate key of a unit's text (candidates are lower-case)."""
        return text.lower()

    def vector(self, text: str) -> np.ndarray:
        """e_x for a unit: its candidate vector, else the mean of its token vectors."""
        k = self.key(text)
        i = self.index.get(k)
        if i is not None:
            return self.vectors[i]
        v = self._extra.get(k)
        if v is None:
            if self.embed_fn is None:
                raise ConfigError(
                    f"unit {text!r} is not a candidate of the space '{self.name}', and the "
                    "space has no embed_fn to place it",
                    hint="build the space with EmbeddingSpace.from_model(...), or pass "
                    "embed_fn= to map unknown words to vectors",
                )
            v = np.asarray(self.embed_fn(k), dtype=np.float32)
            self._extra[k] = v
        return v

    def vectors_for(self, texts: Sequence[str]) -> np.ndarray:
        """Stack of e_x for several units, shape (len(texts), dim)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.vector(t) for t in texts])

    # -- distances -----------------------------------------------------------------------
    def distances(self, queries: np.ndarray) -> np.ndarray:
        """Euclidean distances from each query row to every candidate, shape (B, |V|)."""
        return pairwise_distances(queries, self.vectors, self.sq_norms)

    def utilities(self, queries: np.ndarray) -> np.ndarray:
        """u(x, y) = -min(d, D)/D ∈ [-1, 0] for each query row and candidate."""
        d = self.distances(queries)
        np.minimum(d, self.diameter, out=d)
        d /= -self.diameter
        return d

    def topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest candidates of each query: (indices, utilities), nearest first."""
        k = min(k, len(self))
        idx_out = np.empty((len(queries), k), dtype=np.int64)
        util_out = np.empty((len(queries), k), dtype=np.float32)
        for s in range(0, len(queries), _CHUNK):
            u = self.utilities(queries[s : s + _CHUNK])
            part = np.argpartition(-u, k - 1, axis=1)[:, :k]
            pu = np.take_along_axis(u, part, axis=1)
            order = np.argsort(-pu, axis=1, kind="stable")
            idx_out[s : s + _CHUNK] = np.take_along_axis(part, order, axis=1)
            util_out[s : s + _CHUNK] = np.take_along_axis(pu, order, axis=1)
        return idx_out, util_out

    def neighbours(self, texts: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cached top-k neighbour sets for units (the CusText output sets)."""
        keys = [self.key(t) for t in texts]
        missing = sorted({kk for kk in keys if (k, kk) not in self._neighbours})
        if missing:
            idx, util = self.topk(self.vectors_for(missing), k)
            for j, kk in enumerate(missing):
                self._neighbours[(k, kk)] = (idx[j], util[j])
        rows = [self._neighbours[(k, kk)] for kk in keys]
        if not rows:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def neighbour_table(self, k: int, cache_dir: Path | None = None) -> float:
        """Compute (or load) the top-k sets of every candidate; returns seconds spent."""
        t0 = time.perf_counter()
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"neighbours-{self.fingerprint()}-k{k}.npz"
            if path.is_file():
                data = np.load(path)
                self._store_table(k, data["idx"], data["util"])
                return time.perf_counter() - t0
        idx, util = self.topk(self.vectors, k)
        self._store_table(k, idx, util)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, idx=idx, util=util)
            os.replace(tmp, path)
        return time.perf_counter() - t0

    def _store_table(self, k: int, idx: np.ndarray, util: np.ndarray) -> None:
        for i, w in enumerate(self.words):
            self._neighbours[(k, w)] = (idx[i], util[i])

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        name_or_path: str = "smollm2-135m-instruct",
        *,
        vocab: VocabFilter = "words",
        min_len: int = 1,
    ) -> EmbeddingSpace:
        """Build the space from a model's input embeddings (no full model load)."""
        t0 = time.perf_counter()
        folder = prepare(name_or_path)
        matrix = _read_input_embeddings(folder)
        tokenizer = _load_tokenizer(folder)
        space = cls.from_embeddings(
            tokenizer, matrix, vocab=vocab, min_len=min_len, name=str(name_or_path)
        )
        space.build_seconds = time.perf_counter() - t0
        return space

    @classmethod
    def from_embeddings(
        cls,
        tokenizer: object,
        matrix: np.ndarray,
        *,
        vocab: VocabFilter = "words",
        min_len: int = 1,
        name: str = "space",
    ) -> EmbeddingSpace:
        """Build the space from a tokenizer and its input-embedding matrix.

        ``vocab="words"`` keeps tokens whose text starts a word and is alphabetic (one
        candidate per lower-cased word, the lower-case token's vector when there is one);
        ``"all"`` keeps every token's decoded text (benchmarks and comparisons).
        """
        texts = token_texts(tokenizer)
        n = min(len(texts), matrix.shape[0])
        words: list[str] = []
        rows: list[int] = []
        if vocab == "all":
            seen: set[str] = set()
            for i in range(n):
                t = texts[i]
                if t and t not in seen:
                    seen.add(t)
                    words.append(t)
                    rows.append(i)
        elif vocab == "words":
            chosen: dict[str, tuple[int, bool]] = {}
            for i in range(n):
                t = texts[i]
                if not t.startswith(" "):
                    continue
                w = t[1:]
                if len(w) < min_len or not w.isalpha():
                    continue
                lw = w.lower()
                is_lower = w == lw
                prev = chosen.get(lw)
                if prev is None or (is_lower and not prev[1]):
                    chosen[lw] = (i, is_lower)
            for lw, (i, _) in chosen.items():
                words.append(lw)
                rows.append(i)
        else:
            raise ConfigError(f"unknown vocabulary filter '{vocab}'", hint="use 'words' or 'all'")
        vectors = np.asarray(matrix[rows], dtype=np.float32)
        return cls(words, vectors, embed_fn=_mean_token_embedder(tokenizer, matrix), name=name)


def pairwise_distances(
    queries: np.ndarray, vectors: np.ndarray, sq_norms: np.ndarray | None = None
) -> np.ndarray:
    """Euclidean distances between query rows and vector rows as one matrix product."""
    q = np.asarray(queries, dtype=np.float32)
    if sq_norms is None:
        sq_norms = np.einsum("ij,ij->i", vectors, vectors)
    sq = np.einsum("ij,ij->i", q, q)[:, None] + sq_norms[None, :]
    sq -= 2.0 * (q @ vectors.T)
    np.maximum(sq, 0.0, out=sq)
    return np.sqrt(sq, out=sq)


def _load_tokenizer(folder: Path) -> object:
    """The folder's tokenizer: the raw ``tokenizers`` file when there is one (loads in well
    under a second), else the transformers tokenizer."""
    file = Path(folder) / "tokenizer.json"
    if file.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(file))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def token_texts(tokenizer: object) -> list[str]:
    """The text each token id stands for, word-boundary markers turned into a space.

    Generic over tokenizer families: decoding a single token through the tokenizer's own
    decoder turns byte-level forms (``Ġ``, ``Ã©``) and SentencePiece ``▁`` into real text.
    A leading space marks a token that starts a word. Accepts a ``tokenizers.Tokenizer`` or
    a transformers tokenizer.
    """
    if hasattr(tokenizer, "id_to_token"):  # tokenizers.Tokenizer
        size = tokenizer.get_vocab_size(with_added_tokens=True)  # type: ignore[attr-defined]
        pieces = [tokenizer.id_to_token(i) for i in range(size)]  # type: ignore[attr-defined]
        decoder = tokenizer.decoder  # type: ignore[attr-defined]

        def to_string(piece: str) -> str:
            return decoder.decode([piece]) if decoder is not None else piece

    else:  # transformers tokenizer
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))  # type: ignore[attr-defined,arg-type]

        def to_string(piece: str) -> str:
            return tokenizer.convert_tokens_to_string([piece])  # type: ignore[attr-defined]

    out = []
    for p in pieces:
        if p is None:
            out.append("")
            continue
        text = to_string(p)
        # SentencePiece decoders drop the leading space of a sequence's first piece.
        if p.startswith("▁") and not text.startswith(" "):
            text = " " + text
        out.append(text)
    return out


def _mean_token_embedder(tokenizer: object, matrix: np.ndarray) -> EmbedFn:
    raw = hasattr(tokenizer, "id_to_token")

    def embed(word: str) -> np.ndarray:
        if raw:
            ids = tokenizer.encode(" " + word, add_special_tokens=False).ids  # type: ignore[attr-defined]
        else:
            ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        ids = [i for i in ids if i < matrix.shape[0]]
        if not ids:
            return np.asarray(matrix.mean(axis=0), dtype=np.float32)
        return np.asarray(matrix[ids].mean(axis=0), dtype=np.float32)

    return embed


def _read_input_embeddings(folder: Path) -> np.ndarray:
    """Read only the input-embedding matrix from a safetensors checkpoint."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no safetensors weights in {folder}", hint="run 'fedcot models prepare'")
    config = json.loads((Path(folder) / "config.json").read_text())
    for f in files:
        with safe_open(str(f), framework="np") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.endswith("embed_tokens.weight") or key.endswith("wte.weight"):
                    m = st.get_tensor(key)
                    if m.shape[0] >= int(config.get("vocab_size", 0)) * 0.9:
                        return m
    raise ConfigError(f"no input-embedding matrix found in {folder}")
