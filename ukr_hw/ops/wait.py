"""The one readiness wait: poll a check until it holds, on tenacity, and the HTTP probe most checks use.

Every "wait until …" of the project goes through :func:`wait_until`: a server answering its probe, the API loading
its model, a flow run reaching a final state, a benchmark seeing the new champion served, ``ukr-hw up`` watching
its children. It returns what the check returned (so a check can hand back the value it found), and ``timeout``
None waits for as long as it takes (until the check holds, a fatal error, or Ctrl-C).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import httpx
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    stop_never,
)
from tenacity import wait_fixed as _wait_fixed

T = TypeVar("T")


class NotReady(TimeoutError):
    """What was waited for did not become ready in the time allowed (the message says what and how long)."""


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float | None,
    what: str,
    interval: float = 0.3,
    fatal: tuple[type[BaseException], ...] = (),
    on_retry: Callable[[float], None] | None = None,
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something true; return that value.

    An exception from ``check`` counts as "not ready yet" (a server still binding its port refuses connections),
    except one of ``fatal`` (a process that died; ``(Exception,)``: any error ends the wait): it ends the wait at
    once and propagates, as does anything that is not an ``Exception`` (Ctrl-C, a signal handler's exception).
    ``on_retry(seconds_waited)`` runs before each pause. Raises :class:`NotReady` after ``timeout`` seconds (None:
    no time limit), chained to the last try's exception if it raised one.
    """

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and not isinstance(exc, fatal)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state.seconds_since_start or 0.0)

    retrying = Retrying(
        stop=stop_never if timeout is None else stop_after_delay(timeout),
        wait=_wait_fixed(interval),
        retry=retry_if_exception(retryable) | retry_if_result(lambda ok: not ok),
        before_sleep=before_sleep,
    )
    try:
        return retrying(check)
    except RetryError as err:
        last = err.last_attempt.exception() if err.last_attempt.failed else None
        raise NotReady(f"{what} not ready after {timeout or 0:.0f}s") from last


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when a GET on ``url`` answers 2xx; False when it answers otherwise or nothing answers."""
    try:
        return httpx.get(url, timeout=timeout, follow_redirects=True).is_success
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError):
        return False
