"""``prefect server start`` on PostgreSQL, and a process worker that runs the deployments' flows."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import httpx

from ukr_hw.ops.ports import require_free_port
from ukr_hw.ops.postgres import require_asyncpg
from ukr_hw.ops.processes import ManagedProcess, find_executable
from ukr_hw.ops.wait import http_ok


def prefect_env(api_url: str, home: Path | None = None) -> dict[str, str]:
    """Environment for Prefect clients (CLI, workers, flows) bound to the server at ``api_url``."""
    env = {"PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    return env


def prefect_healthy(api_url: str) -> bool:
    return http_ok(f"{api_url}/health")


def worker_registered(api_url: str, pool: str) -> bool:
    """True when at least one worker of ``pool`` has sent a heartbeat to the Prefect API."""
    try:
        resp = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}, timeout=3)
        return resp.is_success and bool(resp.json() if resp.content else [])
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError):
        return False


def start_server(host: str, port: int, database_url: str, home: Path, log_path: Path, timeout: float) -> ManagedProcess:
    """``prefect server start`` (with its UI) on ``database_url`` (``postgresql+asyncpg://``), ready when it
    answers ``/api/health``."""
    require_asyncpg()
    require_free_port(port, "prefect server", host, setting="prefect_port")
    api_url = f"http://{host}:{port}/api"
    proc = ManagedProcess(
        "prefect",
        [find_executable("prefect"), "server", "start", "--host", host, "--port", str(port)],
        log_path,
        env={
            **prefect_env(api_url, home),
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_SERVER_UI_ENABLED": "true",
        },
    )
    proc.start()
    proc.wait_ready(lambda: prefect_healthy(api_url), timeout, f"Prefect at {api_url}")
    return proc


def start_worker(
    api_url: str, pool: str, env: Mapping[str, str], home: Path, log_path: Path, cwd: Path, timeout: float
) -> ManagedProcess:
    """A ``process`` worker on ``pool`` (flows run from ``cwd``), ready once its heartbeat reached the server."""
    name = f"ukr-hw-{socket.gethostname()}-{os.getpid()}"
    proc = ManagedProcess(
        "worker",
        [find_executable("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name],
        log_path,
        env={**env, **prefect_env(api_url, home)},
        cwd=cwd,
    )
    proc.start()
    proc.wait_ready(lambda: worker_registered(api_url, pool), timeout, f"worker on pool {pool}")
    return proc
