"""Sliding-window rate limits, in memory (one process: the sketchpad's), thread-safe.

A :class:`RateLimiter` counts events per key (a source address, a session) over a window; :meth:`RateLimiter.acquire`
takes one slot under every limit it is given or none at all (so a refused save counts nowhere), and
:meth:`RateLimiter.release` gives the slots back when the work behind them did not happen (an invalid drawing).
The number of keys kept is bounded: idle keys are dropped, the oldest first when there are too many.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """At most ``count`` events per ``window_s`` seconds; ``count`` 0 means no limit."""

    count: int
    window_s: float

    @property
    def unlimited(self) -> bool:
        return self.count <= 0 or self.window_s <= 0


@dataclass(frozen=True)
class Refusal:
    """Why :meth:`RateLimiter.acquire` said no: the key whose ``limit`` is reached and when a slot frees up."""

    key: str
    limit: Limit
    retry_after_s: float


class RateLimiter:
    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _trim(self, key: str, window_s: float, now: float) -> deque[float]:
        q = self._events.get(key)
        if q is None:
            q = self._events[key] = deque()
        while q and q[0] <= now - window_s:
            q.popleft()
        self._events.move_to_end(key)
        return q

    def acquire(self, checks: Sequence[tuple[str, Limit]]) -> Refusal | None:
        """One event for every ``(key, limit)``, all or nothing: None when taken, else the first :class:`Refusal`."""
        with self._lock:
            now = self.clock()
            active = [(k, lim) for k, lim in checks if not lim.unlimited]
            for key, lim in active:
                q = self._trim(key, lim.window_s, now)
                if len(q) >= lim.count:
                    return Refusal(key, lim, max(0.0, q[0] + lim.window_s - now))
            for key, _ in active:
                self._events[key].append(now)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
            return None

    def release(self, checks: Sequence[tuple[str, Limit]]) -> None:
        """Give back the newest event of each key (after an :meth:`acquire` whose work did not happen)."""
        with self._lock:
            for key, lim in checks:
                q = self._events.get(key)
                if not lim.unlimited and q:
                    q.pop()

    def count(self, key: str, window_s: float) -> int:
        """Events of ``key`` in the last ``window_s`` seconds."""
        with self._lock:
            now = self.clock()
            q = self._events.get(key)
            return 0 if not q else sum(1 for t in q if t > now - window_s)


def describe_span(seconds: float) -> str:
    """``600`` → ``"10 minutes"``, ``60`` → ``"minute"``, ``30`` → ``"30 seconds"`` (for "in the last …")."""
    if seconds % 60 == 0 or seconds >= 600:
        minutes = round(seconds / 60)
        return "minute" if minutes == 1 else f"{minutes} minutes"
    return f"{round(seconds)} seconds"


def describe_wait(seconds: float) -> str:
    """A wait as people say it: ``"about 40 seconds"``, ``"about 3 minutes"``."""
    seconds = max(1, round(seconds))
    if seconds < 90:
        return f"about {seconds} second{'s' if seconds != 1 else ''}"
    return f"about {round(seconds / 60)} minutes"
