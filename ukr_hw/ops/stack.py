"""The native stack described by the settings: addresses, credentials, the state file, and the state machine that
starts services in order (:data:`~ukr_hw.ops.services.TABLE`), stops them in reverse and reports their status.

Detached processes whose pids, ports and logs live in ``settings.stack_dir`` (``.stack/``: ``state.json``,
``logs/*.log``, ``env``, ``credentials.json``). ``up`` refuses a setting that still holds a ``change-me``
placeholder, and with ``bootstrap`` set, once the Prefect server (and the worker) run and before the API starts, it
runs the same bootstrap as compose's one-shot service (:mod:`ukr_hw.ops.bootstrap`).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ukr_hw.ops import REPO, StackError
from ukr_hw.ops import bootstrap as boot
from ukr_hw.ops import postgres as pg
from ukr_hw.ops.prefect_server import prefect_env
from ukr_hw.ops.processes import kill_group, same_process, start_time
from ukr_hw.ops.s3 import S3Server
from ukr_hw.ops.services import BY_NAME, NEEDS, SERVICES, Started
from ukr_hw.settings import Settings

#: variables the stack's processes inherit and read, checked for placeholders (besides the UKR_HW_ settings)
_INHERITED_PREFIXES = ("UKR_HW_", "PREFECT_", "MLFLOW_", "AWS_")


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


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


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

    @property
    def prefect_home(self) -> Path:
        """``PREFECT_HOME`` of the stack's server, worker and bootstrap (profiles, the local storage)."""
        return self.dir / "prefect-home"

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
        return BY_NAME[service].url(self)

    def port(self, service: str) -> int | None:
        return BY_NAME[service].port(self) if service in BY_NAME else None

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
        return pg.database_url(self.settings.postgres_url, name, driver)

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
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.client_env().items()]
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
        return bool(entry) and same_process(int(entry["pid"]), entry.get("start_time"))

    def healthy(self, service: str) -> bool:
        return BY_NAME[service].probe(self)

    # --- service definitions: ukr_hw.ops.services.TABLE
    def s3_server(self) -> S3Server:
        """The stack's SeaweedFS, with its credentials, port and buckets (not started)."""
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

    def _start_one(self, service: str, timeout: float) -> Started:
        if service not in BY_NAME:
            raise StackError(f"unknown service {service!r}: choose from {', '.join(SERVICES)}")
        return BY_NAME[service].start(self, timeout)

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
        """The compose bootstrap's steps against this stack (:func:`ukr_hw.ops.bootstrap.run`): pools, deployments,
        the weekly schedule on ``settings.prefect_work_pool``, the data limit, the failure alert, and a first
        champion by ``train`` when the registry has none. ``services``: those running (default: all)."""
        s = self.settings
        state = self.read_state()
        running = set(SERVICES if services is None else services) | {n for n in SERVICES if self.running(n, state)}
        env = {
            **os.environ,
            **self.client_env(),
            **prefect_env(self.prefect_api_url, self.prefect_home),
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

        ``bootstrap``: a training mode of :data:`ukr_hw.ops.bootstrap.TRAIN_MODES` runs :meth:`bootstrap` once the
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
            pid = self._start_one(service, timeout).pid
            assert pid is not None
            state[service] = {
                "pid": pid,
                "start_time": start_time(pid),
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
