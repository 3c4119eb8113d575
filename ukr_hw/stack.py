"""Native service stack: the same servers as the Docker stack, as plain processes on loopback.

The code lives in :mod:`ukr_hw.ops`, one module per server (see its docstring); this module keeps the names that
tests, benchmarks, ``services/up.py`` and the CLI use as ``from ukr_hw import stack``:

* :class:`ManagedProcess`, :func:`kill_group`, :func:`log_tail` — :mod:`ukr_hw.ops.processes` (psutil);
* ports — :mod:`ukr_hw.ops.ports`; the readiness wait and :func:`http_ok` — :mod:`ukr_hw.ops.wait` (tenacity);
* PostgreSQL helpers — :func:`ensure_database`, :func:`drop_database`, :func:`temporary_database`;
* :class:`S3Server` (SeaweedFS), :class:`MlflowServer`, the Prefect helpers;
* :class:`Stack`, :func:`expand`, :data:`SERVICES` and :func:`main`, the ``ukr-hw stack up|down|status`` command.
"""

from __future__ import annotations

from ukr_hw.ops import LOOPBACK, REPO, StackError
from ukr_hw.ops.cli import main
from ukr_hw.ops.mlflow_server import MlflowServer
from ukr_hw.ops.ports import free_port, free_ports, port_in_use, require_free_port
from ukr_hw.ops.postgres import database_url, drop_database, ensure_database, pg_connect, temporary_database
from ukr_hw.ops.prefect_server import prefect_env, prefect_healthy, worker_registered
from ukr_hw.ops.processes import (
    ManagedProcess,
    find_executable,
    group_alive,
    is_zombie,
    kill_group,
    log_tail,
    same_process,
    start_time,
)
from ukr_hw.ops.s3 import S3Server, weed_binary
from ukr_hw.ops.services import NEEDS, SERVICES
from ukr_hw.ops.stack import Stack, expand
from ukr_hw.ops.wait import NotReady, http_ok, wait_until

# the names the test fixtures and tests reach for by their former, private spelling
_pg_connect = pg_connect
_group_alive = group_alive
_same_process = same_process
_process_start_time = start_time

__all__ = [
    "LOOPBACK",
    "NEEDS",
    "REPO",
    "SERVICES",
    "ManagedProcess",
    "MlflowServer",
    "NotReady",
    "S3Server",
    "Stack",
    "StackError",
    "database_url",
    "drop_database",
    "ensure_database",
    "expand",
    "find_executable",
    "free_port",
    "free_ports",
    "group_alive",
    "http_ok",
    "is_zombie",
    "kill_group",
    "log_tail",
    "main",
    "port_in_use",
    "prefect_env",
    "prefect_healthy",
    "require_free_port",
    "same_process",
    "start_time",
    "temporary_database",
    "wait_until",
    "weed_binary",
    "worker_registered",
]
