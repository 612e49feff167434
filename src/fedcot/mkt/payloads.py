"""The typed messages FedMKT parties exchange.

Every payload is a pydantic model, validated on arrival and serialisable to JSON, so the
in-process engine and a network transport carry the same objects. Arrays travel as
little-endian raw bytes (base64 in JSON): top-K ids as int32, log-probabilities as float16.
Nothing vocabulary-sized is ever sent.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from fedcot.train.sparse import SparseRows

__all__ = ["AdapterMessage", "LogitsMessage", "SampleLogits", "TensorBlob"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise ValueError(f"not valid base64: {e}") from e


Blob = Annotated[bytes, BeforeValidator(_unb64), PlainSerializer(_b64, return_type=str)]
"""Raw bytes, base64 in JSON."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleLogits(_Message):
    """One public sample as a sender sees it: its continuation tokens, the sender's sparse
    predictive distribution for each of them, and its loss on them."""

    sample_id: str
    token_ids: list[int] = Field(description="the continuation in the sender's vocabulary")
    k: int = Field(ge=1, le=4096)
    topk_ids: Blob = Field(description="int32 [n, k], -1 = padding")
    topk_logprobs: Blob = Field(description="float16 [n, k]; padding carries -inf")
    transferred: Blob = Field(b"", description="uint8 [n]; 1 = real distribution")
    loss: float = Field(description="the sender's loss on the continuation (NaN: unknown)")

    @model_validator(mode="after")
    def _shapes(self) -> SampleLogits:
        n = len(self.token_ids)
        if len(self.topk_ids) != 4 * n * self.k:
            raise ValueError(
                f"topk_ids holds {len(self.topk_ids)} bytes, expected {4 * n * self.k}"
            )
        if len(self.topk_logprobs) != 2 * n * self.k:
            raise ValueError(
                f"topk_logprobs holds {len(self.topk_logprobs)} bytes, expected {2 * n * self.k}"
            )
        if self.transferred and len(self.transferred) != n:
            raise ValueError(f"transferred holds {len(self.transferred)} bytes, expected {n}")
        if any(i < 0 for i in self.token_ids):
            raise ValueError("token ids must be >= 0")
        return self

    @classmethod
    def from_rows(
        cls, sample_id: str, token_ids: list[int], rows: SparseRows, loss: float
    ) -> SampleLogits:
        """Pack a sender's rows (one per continuation token)."""
        if len(rows) != len(token_ids):
            raise ValueError(f"{len(rows)} rows for {len(token_ids)} tokens")
        ids = np.ascontiguousarray(rows.ids, dtype="<i4")
        lp = np.ascontiguousarray(rows.logprobs, dtype="<f2")
        return cls(
            sample_id=sample_id,
            token_ids=[int(t) for t in token_ids],
            k=max(int(rows.ids.shape[1]) if rows.ids.ndim == 2 else 1, 1),
            topk_ids=ids.tobytes(),
            topk_logprobs=lp.tobytes(),
            transferred=np.asarray(rows.transferred, dtype=np.uint8).tobytes(),
            loss=float(loss),
        )

    def rows(self) -> SparseRows:
        """The rows back as arrays (float32 log-probabilities)."""
        n = len(self.token_ids)
        ids = np.frombuffer(self.topk_ids, dtype="<i4").reshape(n, self.k).astype(np.int64)
        lp = np.frombuffer(self.topk_logprobs, dtype="<f2").reshape(n, self.k).astype(np.float32)
        lp = np.where(ids < 0, -np.inf, lp).astype(np.float32)
        if self.transferred:
            tr = np.frombuffer(self.transferred, dtype=np.uint8).astype(bool)
        else:
            tr = np.ones(n, dtype=bool)
        return SparseRows(ids=ids, logprobs=lp, transferred=tr)


class LogitsMessage(_Message):
    """A party's top-K logits and per-sample losses on the public set, for one round."""

    kind: Literal["logits"] = "logits"
    round: int = Field(ge=1)
    sender: str
    model: str
    tokenizer_hash: str
    vocab_size: int = Field(ge=1)
    samples: list[SampleLogits]

    def nbytes(self) -> int:
        """Size of the message as JSON (what a transport would carry)."""
        return len(self.model_dump_json().encode())

    def dense_nbytes(self) -> int:
        """What the same rows would take as dense float32 vocabulary-sized vectors."""
        rows = sum(len(s.token_ids) for s in self.samples)
        return rows * self.vocab_size * 4

    def losses(self) -> np.ndarray:
        """The per-sample losses in order (NaN where unknown)."""
        return np.array([s.loss for s in self.samples], dtype=np.float64)


class TensorBlob(_Message):
    """One float32 tensor."""

    shape: list[int]
    data: Blob

    @model_validator(mode="after")
    def _size(self) -> TensorBlob:
        if any(d < 0 for d in self.shape):
            raise ValueError("negative dimension")
        if len(self.data) != 4 * int(np.prod(self.shape, dtype=np.int64)):
            raise ValueError("data size does not match the shape")
        return self

    @classmethod
    def from_array(cls, a: np.ndarray) -> TensorBlob:
        """Pack an array as float32."""
        arr = np.ascontiguousarray(a, dtype="<f4")
        return cls(shape=list(arr.shape), data=arr.tobytes())

    def array(self) -> np.ndarray:
        """The tensor back as a float32 array."""
        return np.frombuffer(self.data, dtype="<f4").reshape(self.shape).copy()


class AdapterMessage(_Message):
    """A client's LoRA weights for FedAvg (homogeneous clients only)."""

    kind: Literal["adapter"] = "adapter"
    round: int = Field(ge=1)
    sender: str
    model: str
    n_examples: int = Field(ge=1, description="weight of this client in the average")
    tensors: dict[str, TensorBlob]

    def nbytes(self) -> int:
        """Size of the message as JSON."""
        return len(self.model_dump_json().encode())
