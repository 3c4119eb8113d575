"""The one readiness wait: poll a check until it holds, on tenacity, and the HTTP probe most checks use."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception, retry_if_result, stop_after_delay
from tenacity import wait_fixed as _wait_fixed


class NotReady(TimeoutError):
    """What was waited for did not become ready in the time allowed (the message says what and how long)."""


def wait_until(
    check: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.3,
    fatal: tuple[type[BaseException], ...] = (),
    on_retry: Callable[[float], None] | None = None,
) -> None:
    """Call ``check`` every ``interval`` seconds until it returns something true.

    An exception from ``check`` counts as "not ready yet" (a server still binding its port refuses connections),
    except one of ``fatal`` (a process that died): it ends the wait at once and propagates, as does anything that is
    not an ``Exception`` (Ctrl-C, a signal handler's exception). ``on_retry(seconds_waited)`` runs before each
    pause. Raises :class:`NotReady` after ``timeout`` seconds, chained to the last try's exception if it raised one.
    """

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and not isinstance(exc, fatal)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry(state.seconds_since_start or 0.0)

    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=_wait_fixed(interval),
        retry=retry_if_exception(retryable) | retry_if_result(lambda ok: not ok),
        before_sleep=before_sleep,
    )
    try:
        retrying(check)
    except RetryError as err:
        last = err.last_attempt.exception() if err.last_attempt.failed else None
        raise NotReady(f"{what} not ready after {timeout:.0f}s") from last


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when a GET on ``url`` answers 2xx; False when it answers otherwise or nothing answers."""
    try:
        return httpx.get(url, timeout=timeout, follow_redirects=True).is_success
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError):
        return False
