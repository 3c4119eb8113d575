"""``ukr-hw stack up|down|status [SERVICES]``: one function per action, looked up in :data:`ACTIONS`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from ukr_hw.ops import StackError
from ukr_hw.ops.stack import Stack, expand
from ukr_hw.settings import Settings, get_settings

#: what `stack up` prints for a shell once it is done (all of it is in .stack/env)
_CLIENT_KEYS = (
    "UKR_HW_MLFLOW_TRACKING_URI",
    "PREFECT_API_URL",
    "UKR_HW_FEEDBACK_URI",
    "UKR_HW_S3_ENDPOINT_URL",
    "UKR_HW_API_URL",
)


def _up(stack: Stack, services: Sequence[str], train: str | None) -> int:
    try:
        stack.up(services, bootstrap=train or os.environ.get("UKR_HW_BOOTSTRAP_TRAIN") or "worker")
    finally:
        env_path = stack.dir / "env"
        if env_path.exists():
            print(f"\nclients: `source {env_path}` (or export these):")
            env = stack.client_env()
            for key in _CLIENT_KEYS:
                print(f"  {key}={env[key]}")
    return 0


def _down(stack: Stack, services: Sequence[str], train: str | None) -> int:
    stack.down(services)
    return 0


def _status(stack: Stack, services: Sequence[str], train: str | None) -> int:
    report = stack.status(expand(services) if services else ())
    for name, info in report.items():
        mark = "up" if info["up"] else ("starting/unhealthy" if info["running"] else "down")
        pid = f"pid {info['pid']}" if info["pid"] else ""
        print(f"{name:8} {mark:18} {info['url']:40} {pid}")
    return 0 if all(i["up"] for i in report.values()) else 3


#: ``ukr-hw stack ACTION``: each returns the exit code (3 from ``status``: something is not up)
ACTIONS: dict[str, Callable[[Stack, Sequence[str], str | None], int]] = {
    "up": _up,
    "down": _down,
    "status": _status,
}


def main(action: str, services: Sequence[str] = (), settings: Settings | None = None, train: str | None = None) -> int:
    """``ukr-hw stack up|down|status [SERVICES]``; returns the exit code.

    ``up`` bootstraps the stack (:meth:`Stack.bootstrap`) when it includes the Prefect server; ``train`` (default:
    ``UKR_HW_BOOTSTRAP_TRAIN``, else ``worker``) says how a first champion is trained when there is none.
    """
    command = ACTIONS.get(action)
    if command is None:
        raise StackError(f"unknown action {action!r}: up, down or status")
    stack = Stack(settings or get_settings())
    try:
        return command(stack, services, train)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if action == "up":
            print("services started so far keep running: `ukr-hw stack status`, `ukr-hw stack down`", file=sys.stderr)
        return 1
