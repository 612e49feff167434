"""Micro-batching for ``fedcot serve``.

Concurrent requests with the same generation parameters are gathered for up to
``batch_wait_ms`` (or until ``max_batch`` prompts) and sent to the backend as one
``generate`` call in a worker thread (:class:`MicroBatcher`); the event loop stays free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from fedcot.errors import BackendError
from fedcot.models.backends.base import Backend, Completion, GenerationParams, Prompt, TopKLogprobs
from fedcot.serving.metrics import ServeMetrics

__all__ = ["MicroBatcher", "ServerClosingError"]


class ServerClosingError(Exception):
    """A request arrived while the batcher was draining for shutdown."""


class _Group:
    """Requests waiting to share one backend call."""

    __slots__ = ("key", "launched", "parts", "sealed", "size", "timer")

    def __init__(self, key: tuple[str, Any]) -> None:
        self.key = key
        self.parts: list[tuple[list[Any], asyncio.Future[list[Any]]]] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.launched = False
        self.sealed = False


class MicroBatcher:
    """Gather concurrent requests into few backend calls.

    Requests with equal keys (the same generation parameters, or the same K for top-K
    log-probabilities) join one group. A group is launched ``wait_s`` after its first
    request or when it holds ``max_batch`` prompts; it keeps taking requests while it waits
    for the backend, which runs one call at a time in a worker thread. Each request gets
    its own slice of the results. If a shared call fails, each request of the group is
    retried alone, so one bad request cannot fail the others.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int,
        wait_s: float,
        metrics: ServeMetrics | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.backend = backend
        self.max_batch = max_batch
        self.wait_s = max(0.0, float(wait_s))
        self.metrics = metrics or ServeMetrics()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: dict[tuple[str, Any], _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock: asyncio.Lock | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    # -- public ----------------------------------------------------------------------------
    async def generate(
        self, prompts: Sequence[Prompt], params: GenerationParams
    ) -> list[Completion]:
        """Completions of ``prompts``, computed in a shared backend call."""
        return await self._submit(("generate", params), list(prompts))

    async def topk_logprobs(self, texts: Sequence[str], k: int) -> list[TopKLogprobs]:
        """Top-``k`` log-probabilities of ``texts``, computed in a shared backend call."""
        return await self._submit(("topk", k), list(texts))

    @property
    def closing(self) -> bool:
        return self._closing

    def reopen(self) -> None:
        """Accept requests again (after :meth:`drain`)."""
        self._closing = False

    async def drain(self) -> None:
        """Refuse new requests, launch the waiting groups and wait for every call to end."""
        self._closing = True
        if self._loop is not asyncio.get_running_loop():
            return
        for group in list(self._open.values()):
            self._seal(group)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        """Stop the worker thread (a later request starts a new one)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    # -- internals -------------------------------------------------------------------------
    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run one per client)
            self._loop = loop
            self._open = {}
            self._tasks = set()
            self._lock = asyncio.Lock()
        return loop

    async def _submit(self, key: tuple[str, Any], items: list[Any]) -> list[Any]:
        if self._closing:
            raise ServerClosingError
        if not items:
            return []
        loop = self._bind()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        group = self._open.get(key)
        if group is not None and group.size + len(items) > self.max_batch:
            self._seal(group)
            group = None
        if group is None:
            group = _Group(key)
            self._open[key] = group
            group.timer = loop.call_later(self.wait_s, self._launch, group)
        group.parts.append((items, fut))
        group.size += len(items)
        if group.size >= self.max_batch:
            self._seal(group)
        return await fut

    def _seal(self, group: _Group) -> None:
        """No more requests join ``group``; launch it."""
        if not group.sealed:
            group.sealed = True
            if self._open.get(group.key) is group:
                del self._open[group.key]
            if group.timer is not None:
                group.timer.cancel()
        self._launch(group)

    def _launch(self, group: _Group) -> None:
        if group.launched or self._loop is None:
            return
        group.launched = True
        task = self._loop.create_task(self._run(group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, group: _Group) -> None:
        assert self._lock is not None
        async with self._lock:
            self._seal(group)
            parts = [(items, fut) for items, fut in group.parts if not fut.done()]
            if not parts:
                return
            try:
                results = await self._call(group.key, [x for items, _ in parts for x in items])
            except asyncio.CancelledError:
                for _, fut in parts:
                    fut.cancel()
                raise
            except Exception as exc:
                if len(parts) == 1:
                    _settle(parts[0][1], exc=exc)
                    return
                for items, fut in parts:  # alone, so that only the culprit fails
                    if fut.done():
                        continue
                    try:
                        one = await self._call(group.key, items)
                    except asyncio.CancelledError:
                        fut.cancel()
                        raise
                    except Exception as exc1:
                        _settle(fut, exc=exc1)
                    else:
                        _settle(fut, result=one)
                return
            offset = 0
            for items, fut in parts:
                _settle(fut, result=results[offset : offset + len(items)])
                offset += len(items)

    async def _call(self, key: tuple[str, Any], items: list[Any]) -> list[Any]:
        kind, arg = key
        if kind == "generate":
            fn = partial(self.backend.generate, items, arg)
        else:
            fn = partial(self.backend.topk_logprobs, items, arg)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedcot-serve")
        m = self.metrics
        m.batches += 1
        m.prompts += len(items)
        m.largest_batch = max(m.largest_batch, len(items))
        assert self._loop is not None
        try:
            out = list(await self._loop.run_in_executor(self._executor, fn))
        except Exception:
            m.backend_errors += 1
            raise
        if len(out) != len(items):
            m.backend_errors += 1
            raise BackendError(f"the backend returned {len(out)} results for {len(items)} inputs")
        return out


def _settle(
    fut: asyncio.Future[list[Any]],
    *,
    result: list[Any] | None = None,
    exc: BaseException | None = None,
) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result or [])
