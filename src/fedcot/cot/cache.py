"""The server-response cache: every answer the server gave, on disk, keyed by what was asked.

One JSON line per answer, appended and flushed (and fsynced) batch by batch, so a run that is
killed during generation keeps everything answered so far and, when resumed, asks the server
only for the rest. The key is a SHA-256 of the prompt, the generation parameters and the
server's model name: change any of them and the answer is asked for again.

The cache holds what the server received (perturbed prompts) and what it said; nothing in it
is private to the client beyond what the server already saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedcot.data.prompts import Prompt
from fedcot.errors import DataError
from fedcot.models.backends.base import Backend, GenerationParams

__all__ = ["AskStats", "CachedAnswer", "RationaleCache", "ask_cached"]


@dataclass
class CachedAnswer:
    """One server answer as stored in the cache."""

    key: str
    prompt: Prompt
    text: str
    finish_reason: str | None
    completion_tokens: int | None
    model: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "prompt": self.prompt,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.completion_tokens,
            "model": self.model,
            "seconds": self.seconds,
        }


class RationaleCache:
    """An append-only JSONL cache of server answers (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._rows: dict[str, CachedAnswer] = {}
        #: Lines that could not be read (a write cut short by a kill); they are re-asked.
        self.skipped_lines = 0
        if self.path.exists():
            self._load()

    @staticmethod
    def key(prompt: Prompt, params: GenerationParams, model: str) -> str:
        """SHA-256 over the prompt, the generation parameters and the model name."""
        blob = json.dumps(
            {"prompt": prompt, "params": params.model_dump(mode="json"), "model": model},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _load(self) -> None:
        with self.path.open("r", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    row = CachedAnswer(**d)
                except (json.JSONDecodeError, TypeError) as exc:
                    if not line.endswith("\n"):  # the last line of a killed write
                        self.skipped_lines += 1
                        continue
                    raise DataError(
                        f"{self.path}:{n}: unreadable cache line ({exc})",
                        hint="delete the line (or the file) to re-ask those prompts",
                    ) from exc
                self._rows[row.key] = row
        if self.skipped_lines:
            # Drop the torn tail so that later appends start on a fresh line.
            good = [json.dumps(r.to_dict(), ensure_ascii=False) for r in self._rows.values()]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
            os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for ``key``, if any."""
        return self._rows.get(key)

    def put_many(self, rows: Sequence[CachedAnswer]) -> None:
        """Append answers and force them to disk before returning."""
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for r in rows:
            self._rows[r.key] = r

    def values(self) -> list[CachedAnswer]:
        """Every cached answer, in insertion order."""
        return list(self._rows.values())


@dataclass
class AskStats:
    """What one :func:`ask_cached` call cost."""

    asked: int = 0  # prompts sent to the server
    cached: int = 0  # prompts answered from the cache
    seconds: float = 0.0  # wall time spent waiting for the server
    completion_tokens: int = 0


def ask_cached(
    backend: Backend,
    prompts: Sequence[Prompt],
    params: GenerationParams,
    cache: RationaleCache,
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    stats: AskStats | None = None,
) -> list[CachedAnswer]:
    """Answers for ``prompts``: from the cache where present, else from ``backend``.

    Missing prompts are sent in batches of ``batch_size``; each batch is written to the cache
    as soon as it returns, so an interrupted call loses at most the batch in flight. A prompt
    repeated within ``prompts`` is asked once.
    """
    model = backend.model_name
    keys = [RationaleCache.key(p, params, model) for p in prompts]
    todo: dict[str, Prompt] = {}
    for k, p in zip(keys, prompts):
        if k not in cache and k not in todo:
            todo[k] = p
    stats = stats if stats is not None else AskStats()
    stats.cached += len(prompts) - len(todo)
    if progress is not None and len(prompts) > len(todo):
        progress(len(prompts) - len(todo))  # cached and repeated prompts: done already
    pending = list(todo.items())
    for i in range(0, len(pending), batch_size):
        chunk = pending[i : i + batch_size]
        t0 = time.perf_counter()
        completions = backend.generate([p for _, p in chunk], params)
        dt = time.perf_counter() - t0
        stats.seconds += dt
        stats.asked += len(chunk)
        rows = []
        for (k, p), c in zip(chunk, completions):
            stats.completion_tokens += c.completion_tokens or 0
            rows.append(
                CachedAnswer(
                    key=k,
                    prompt=p,
                    text=c.text,
                    finish_reason=c.finish_reason,
                    completion_tokens=c.completion_tokens,
                    model=model,
                    seconds=round(dt / len(chunk), 4),
                )
            )
        cache.put_many(rows)
        if progress is not None:
            progress(len(chunk))
    out = []
    for k in keys:
        row = cache.get(k)
        assert row is not None
        out.append(row)
    return out
