"""Retry policy of the flows' network-bound Prefect tasks: retry a transient error only.

* :func:`is_transient` — is this error one that a later try may not meet (the network, HTTP 429/5xx, MLflow's
  "temporarily unavailable", a DVC command that failed for one of these)? Configuration errors are not.
* :func:`retry_if_transient` — the ``retry_condition_fn`` of those tasks (``flows/*.py``).
* :func:`last_try` — True inside a task's last try (a task can then end with a warning instead of failing).
"""

from __future__ import annotations

import socket
import subprocess
from typing import Any


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


#: what DVC prints when its remote is briefly unreachable or overloaded (it runs as a subprocess: text is all)
_TRANSIENT_TEXT = (
    "connection refused",
    "connection reset",
    "connection aborted",
    "could not connect",
    "connect timeout",
    "timed out",
    "took longer than",
    "temporary failure in name resolution",
    "endpointconnectionerror",
    "service unavailable",
    "slowdown",
    "503",
    "502",
    "504",
)


def is_transient(exc: BaseException) -> bool:
    """True for an error that a later try may not meet: the network (refused, reset, timed out, DNS), HTTP 429 or
    5xx, MLflow's "temporarily unavailable", a DVC command that failed for one of these. Configuration errors (a
    missing mirror, a wrong checksum, HTTP 4xx, refused credentials) are not: they fail at once, clearly."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionError | TimeoutError | socket.timeout | socket.gaierror):
            return True
        if isinstance(exc, subprocess.TimeoutExpired):
            return True
        module = type(exc).__module__.split(".", 1)[0]
        names = {c.__name__ for c in type(exc).__mro__}
        status = _http_status(exc)
        if status is not None and (status == 429 or status >= 500):
            return True
        if module in ("httpx", "httpcore") and names & {"TransportError", "TimeoutException", "NetworkError"}:
            return True
        if module in ("requests", "urllib3") and names & {
            "ConnectionError",
            "Timeout",
            "ProtocolError",
            "NewConnectionError",
            "MaxRetryError",
            "RetryError",  # requests gave up on HTTP 429/5xx (MLflow's client retries those itself first)
            "TimeoutError",
        }:
            return True
        if module == "botocore" and names & {"ConnectionError", "HTTPClientError"}:
            return True
        # (not INTERNAL_ERROR: every MlflowException raised without a code has it)
        if module == "mlflow" and getattr(exc, "error_code", None) in (
            "TEMPORARILY_UNAVAILABLE",
            "REQUEST_LIMIT_EXCEEDED",
        ):
            return True
        if type(exc).__name__ == "VersioningError" and any(t in str(exc).lower() for t in _TRANSIENT_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed network-bound task only for a transient error."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return is_transient(data)
    try:
        state.result()
    except BaseException as exc:  # the task's own exception
        return is_transient(exc)
    return False


def last_try() -> bool:
    """True inside the last try a Prefect task has (or outside any task run)."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is None:
        return True
    return ctx.task_run.run_count > (ctx.task.retries or 0)
