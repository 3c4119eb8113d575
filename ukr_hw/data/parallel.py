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


def preprocess_files(paths: list[str]) -> list[tuple[Any, Any] | str]:
    """Worker: each image file through the one ``preprocess`` function → ``(uint8 28×28, ink features)``, or an
    error message in its place (a file that cannot be read or holds no ink), so a caller can report it by name."""
    from pathlib import Path

    from ukr_hw.preprocess import PreprocessError, preprocess

    out: list[tuple[Any, Any] | str] = []
    for p in paths:
        try:
            g = preprocess(Path(p))
            out.append((g.to_uint8(), g.features))
        except (PreprocessError, OSError) as exc:
            out.append(f"{exc.__class__.__name__}: {exc}")
    return out
