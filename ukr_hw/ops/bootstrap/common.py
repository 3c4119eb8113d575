"""What every bootstrap step shares: its error, its log line, the executables and the Prefect client it uses."""

from __future__ import annotations

import sys
from pathlib import Path


class BootstrapError(RuntimeError):
    """A step cannot be done; the message says what to fix."""


def log(msg: str) -> None:
    print(f"bootstrap: {msg}", flush=True)


def exe(name: str) -> str:
    """``name`` from this interpreter's environment (``.venv/bin``), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def prefect_client():
    """A synchronous client of the Prefect server this process's settings name (see ``deployments.prefect_api``)."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)
