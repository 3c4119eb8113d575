"""``mlflow server`` on a PostgreSQL backend with proxied artifacts in S3."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ukr_hw.ops import LOOPBACK
from ukr_hw.ops.ports import free_port, require_free_port
from ukr_hw.ops.processes import ManagedProcess, find_executable
from ukr_hw.ops.wait import http_ok


def mlflow_healthy(url: str) -> bool:
    """True when the tracking server at ``url`` answers its health probe."""
    return http_ok(f"{url}/health")


@dataclass
class MlflowServer:
    """``mlflow server`` on a PostgreSQL backend with proxied artifacts in S3."""

    backend_store_uri: str
    artifacts_destination: str
    log_path: Path
    s3_env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    host: str = LOOPBACK
    workers: int = 1
    _proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 300.0) -> MlflowServer:
        if not self.port:
            self.port = free_port(self.host)
        require_free_port(self.port, "mlflow server", self.host, setting="mlflow_port")
        args = [
            find_executable("mlflow"),
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            self.artifacts_destination,
            "--serve-artifacts",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        # no background job runner (huey): not used here, and it costs processes and CPU
        env = {**self.s3_env, "PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self._proc = ManagedProcess("mlflow", args, self.log_path, env=env)
        self._proc.start()
        self._proc.wait_ready(lambda: mlflow_healthy(self.url), timeout, f"MLflow at {self.url}")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
