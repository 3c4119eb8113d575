"""Run the one preprocessing function over many inputs in a small process pool."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def pool_map(fn: Callable[[T], R], items: Sequence[T], workers: int, min_per_worker: int = 2) -> list[R]:
    """``[fn(i) for i in items]`` in up to ``workers`` spawned processes (order kept).

    ``fn`` must be a module-level function. Spawned (not forked) workers, because callers may run inside a
    multi-threaded orchestrator where forking is unsafe. Small inputs run inline: a pool costs ~1 s to start.
    """
    items = list(items)
    if workers <= 1 or len(items) < workers * min_per_worker:
        return [fn(i) for i in items]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        return list(ex.map(fn, items))


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]
