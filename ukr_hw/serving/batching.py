"""Coalescing an API worker's concurrent requests into one call to the model service.

Each call from an API worker to the model service is an HTTP hop whose cost is larger than the forward pass of a
glyph. The :class:`Coalescer` keeps at most one such call in flight per worker: the requests that queue up while it
runs go out together in the next one (up to ``max_rows`` rows), so under load there is one hop per batch rather
than per image, and a lone request still goes out at once. The model service's adaptive batching then merges the
calls of all workers into one forward pass.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np


class Coalescer:
    """One model call at a time per API worker, carrying every request that queued up while the last one ran.

    Under load, concurrent requests in a worker become one call to the model service instead of one call each
    (its per-call HTTP cost is larger than the forward pass of a glyph); with a single client a request goes out
    at once, so nothing waits. The model service's adaptive batching then merges the calls of all workers.
    """

    def __init__(self, call: Callable[[np.ndarray], Awaitable[list[dict[str, Any]]]], max_rows: int) -> None:
        self._call, self._max_rows = call, max(1, max_rows)
        self._pending: collections.deque[tuple[np.ndarray, asyncio.Future]] = collections.deque()
        self._running = False
        self._task: asyncio.Task | None = None  # referenced, so the running drain is never garbage-collected

    async def __call__(self, rows: np.ndarray) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((rows, future))
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch, n = [], 0
        while self._pending and (not batch or n + len(self._pending[0][0]) <= self._max_rows):
            rows, future = self._pending.popleft()
            if not future.done():  # the client went away meanwhile
                batch.append((rows, future))
                n += len(rows)
        return batch

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                if not batch:
                    continue
                try:
                    results = await self._call(np.concatenate([rows for rows, _ in batch]))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for rows, future in batch:
                    if not future.done():
                        future.set_result(results[start : start + len(rows)])
                    start += len(rows)
        finally:
            self._running = False
