"""The data lock: one flow at a time uses ``data/processed`` (prepare, train, retrain, tune; the pipeline around
its prepare and train).

* :func:`data_lock` — the context manager the flows hold: a file lock beside the data (every process of this
  machine) and, against a Prefect server, a slot of the global concurrency limit :data:`DATA_LIMIT`.
* :func:`ensure_data_limit` — that limit with one slot (the bootstrap makes it; so does the first flow needing it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: the Prefect global concurrency limit (one slot) held by every flow that uses data/processed
DATA_LIMIT = "ukr-hw-data"
#: the file lock beside the data (under ``settings.cache_dir``) that does the same on one machine
DATA_LOCK_FILE = "data.lock"

_log = logging.getLogger(__name__)


def ensure_data_limit(client: Any = None) -> bool:
    """The global concurrency limit :data:`DATA_LIMIT` with one active slot; True when it was created or fixed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with contextlib.ExitStack() as stack:
        client = client or stack.enter_context(get_client(sync_client=True))
        try:
            current = client.read_global_concurrency_limit_by_name(DATA_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=DATA_LIMIT, limit=1))
            except ObjectAlreadyExists:  # a flow made it meanwhile
                return False
            return True
        if current.limit != 1 or not current.active:
            client.update_global_concurrency_limit(DATA_LIMIT, GlobalConcurrencyLimitUpdate(limit=1, active=True))
            return True
        return False


#: per lock file: [the in-process lock (re-entrant: the pipeline holds it around its prepare and train), depth]
_held: dict[str, list[Any]] = {}
_held_guard = threading.Lock()


def data_lock_path(settings: Any) -> Path:
    """The lock file beside the data: ``<cache_dir>/data.lock`` (not versioned by DVC or git)."""
    return settings.path(settings.cache_dir) / DATA_LOCK_FILE


def _say(msg: str) -> None:
    try:
        from prefect.logging import get_run_logger

        get_run_logger().info(msg)
    except Exception:
        _log.info(msg)


@contextlib.contextmanager
def _file_lock(path: Path, holder: str) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                who = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            except OSError:
                who = "another process"
            _say(f"waiting for {path}: data/processed is in use by {who}")
            fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel frees it when the holder exits, however it ends
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.pwrite(fd, json.dumps({"holder": holder, "pid": os.getpid(), "since": since}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _server_limit(holder: str) -> Iterator[None]:
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        # Prefect's embedded API (the README's commands without a server): each process runs its own temporary
        # server, and a slot held by a process that dies (Ctrl-C stops its server too) would never be given back.
        # The file lock alone guards the data there.
        yield
        return
    from prefect.concurrency.sync import concurrency

    ensure_data_limit()
    _say(f"{holder}: taking the slot of Prefect's concurrency limit {DATA_LIMIT}")
    with concurrency(DATA_LIMIT, occupy=1, strict=True):
        yield


@contextlib.contextmanager
def data_lock(settings: Any, holder: str) -> Iterator[None]:
    """Hold the one data lock while a flow uses ``data/processed``: prepare, train, retrain and tune wait for each
    other instead of writing (or reading) it at once.

    Two layers, taken in this order: a file lock (``flock``) on :func:`data_lock_path` (every process on this
    machine and its containers on the same volume; freed by the kernel however the holder ends, so it works on
    the embedded Prefect API too), and, against a Prefect server (``PREFECT_API_URL``), a slot of the global
    concurrency limit :data:`DATA_LIMIT` (workers on other machines; a crashed holder's lease expires). Re-entrant
    in one process: the pipeline holds it around its prepare and train subflows.
    """
    path = data_lock_path(settings)
    key = str(path.resolve())
    with _held_guard:
        entry = _held.setdefault(key, [threading.RLock(), 0])
    with entry[0]:
        if entry[1] > 0:  # this process holds it already (a subflow of the pipeline)
            entry[1] += 1
            try:
                yield
            finally:
                entry[1] -= 1
            return
        with _file_lock(path, holder), _server_limit(holder):
            entry[1] = 1
            try:
                yield
            finally:
                entry[1] = 0
