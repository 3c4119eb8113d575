"""The native stack's services as a table: what each needs running first, how it starts (and waits until it
answers), its probe, its address and its port. :class:`~ukr_hw.ops.stack.Stack` walks this table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ukr_hw.ops import REPO
from ukr_hw.ops import mlflow_server as mlflow_ops
from ukr_hw.ops import prefect_server as prefect_ops
from ukr_hw.ops.ports import require_free_port
from ukr_hw.ops.postgres import ensure_database, require_asyncpg
from ukr_hw.ops.processes import ManagedProcess, find_executable
from ukr_hw.ops.wait import http_ok

if TYPE_CHECKING:
    from ukr_hw.ops.stack import Stack

#: databases beside MLflow's on the stack's PostgreSQL: Optuna studies and retrain lineage
EXTRA_DATABASES = ("ukr_hw_optuna", "ukr_hw_lineage")


class Started(Protocol):
    """What a start function returns: something with the pid the state file records."""

    @property
    def pid(self) -> int | None: ...


@dataclass(frozen=True)
class Service:
    """One row of the table."""

    name: str
    needs: tuple[str, ...]
    start: Callable[[Stack, float], Started]  # start it and wait (``timeout`` s) until it answers
    probe: Callable[[Stack], bool]  # does it answer now?
    url: Callable[[Stack], str]
    port: Callable[[Stack], int | None]


def _start_s3(stack: Stack, timeout: float) -> Started:
    return stack.s3_server().start(timeout=timeout)


def _start_mlflow(stack: Stack, timeout: float) -> Started:
    s = stack.settings
    ensure_database(s.mlflow_database, s.postgres_url)
    for extra in EXTRA_DATABASES:
        ensure_database(extra, s.postgres_url)
    server = mlflow_ops.MlflowServer(
        backend_store_uri=stack.database_url(s.mlflow_database),
        artifacts_destination=f"s3://{s.mlflow_bucket}/mlflow",
        log_path=stack.log("mlflow"),
        s3_env={**stack.client_env(), "MLFLOW_S3_ENDPOINT_URL": stack.s3_url},
        port=s.mlflow_port,
        host=stack.host,
    )
    return server.start(timeout=timeout)


def _start_prefect(stack: Stack, timeout: float) -> Started:
    s = stack.settings
    require_asyncpg()
    ensure_database(s.prefect_database, s.postgres_url)
    return prefect_ops.start_server(
        stack.host,
        s.prefect_port,
        stack.database_url(s.prefect_database, "asyncpg"),
        stack.prefect_home,
        stack.log("prefect"),
        timeout,
    )


def _start_worker(stack: Stack, timeout: float) -> Started:
    s = stack.settings
    return prefect_ops.start_worker(
        stack.prefect_api_url,
        s.prefect_work_pool,
        stack.client_env(),
        stack.prefect_home,
        stack.log("worker"),
        s.code_dir or REPO,
        timeout,
    )


def _run_ukr_hw(
    stack: Stack, timeout: float, name: str, args: list[str], env: dict[str, str], ready_url: str, what: str
) -> ManagedProcess:
    """``ukr-hw <args>`` (the API or the UI) from the project root, ready when ``ready_url`` answers 2xx."""
    port = BY_NAME[name].port(stack)
    assert port is not None
    require_free_port(port, what, stack.host, setting=f"{name}_port")
    proc = ManagedProcess(name, [find_executable("ukr-hw"), *args], stack.log(name), env=env, cwd=stack.settings.root)
    proc.start()
    proc.wait_ready(lambda: http_ok(ready_url), timeout, f"{what} at {ready_url.rsplit('/', 1)[0]}")
    return proc


def _start_api(stack: Stack, timeout: float) -> Started:
    args = ["serve", "--host", stack.host, "--port", str(stack.settings.api_port)]
    # the stack's own BentoML store: tags like ukr-hw:mlflow-v1 are per registry
    env = {"BENTOML_HOME": str(stack.dir / "bentoml"), **stack.client_env()}
    return _run_ukr_hw(stack, timeout, "api", args, env, f"{stack.api_url}/readyz", "API")


def _start_ui(stack: Stack, timeout: float) -> Started:
    args = ["ui", "--host", stack.host, "--port", str(stack.settings.ui_port), "--api-url", stack.api_url]
    return _run_ukr_hw(stack, timeout, "ui", args, stack.client_env(), f"{stack.ui_url}/config", "UI")


#: the stack's services in start order
TABLE: tuple[Service, ...] = (
    Service(
        "s3",
        (),
        _start_s3,
        lambda st: st.s3_server().answers(),
        lambda st: st.s3_url,
        lambda st: st.settings.s3_port,
    ),
    Service(
        "mlflow",
        ("s3",),
        _start_mlflow,
        lambda st: mlflow_ops.mlflow_healthy(st.mlflow_url),
        lambda st: st.mlflow_url,
        lambda st: st.settings.mlflow_port,
    ),
    Service(
        "prefect",
        (),
        _start_prefect,
        lambda st: prefect_ops.prefect_healthy(st.prefect_api_url),
        lambda st: st.prefect_api_url,
        lambda st: st.settings.prefect_port,
    ),
    Service(
        "worker",
        ("prefect", "s3", "mlflow"),
        _start_worker,
        lambda st: prefect_ops.worker_registered(st.prefect_api_url, st.settings.prefect_work_pool),
        lambda st: f"{st.prefect_api_url} (pool {st.settings.prefect_work_pool})",
        lambda st: None,
    ),
    Service(
        "api",
        ("mlflow", "s3"),
        _start_api,
        lambda st: http_ok(f"{st.api_url}/readyz"),
        lambda st: st.api_url,
        lambda st: st.settings.api_port,
    ),
    Service(
        "ui",
        ("api", "s3"),
        _start_ui,
        lambda st: http_ok(f"{st.ui_url}/config"),
        lambda st: st.ui_url,
        lambda st: st.settings.ui_port,
    ),
)
BY_NAME: dict[str, Service] = {service.name: service for service in TABLE}
SERVICES: tuple[str, ...] = tuple(BY_NAME)
#: what each service needs running first (``stack up mlflow`` starts s3 too)
NEEDS: dict[str, tuple[str, ...]] = {service.name: service.needs for service in TABLE}
