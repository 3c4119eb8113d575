"""Bootstrap a ukr-hw stack once its servers are up: users, work pools, deployments, schedules, a first champion.

    python deploy/bootstrap.py                   # what docker-compose.yml's one-shot `bootstrap` service runs
    .venv/bin/python deploy/bootstrap.py --train local   # natively, against `ukr-hw stack up` (see docs/deploy.md)

Steps, each idempotent (safe on every `docker compose up`):

1. Refuse to go on while any variable of its environment still holds a ``change-me`` placeholder from
   ``.env.example`` (the message names the variable), or when ``PREFECT_API_URL`` / an MLflow server is missing.
2. MLflow users (only when ``MLFLOW_ADMIN_PASSWORD`` is set, i.e. against MLflow's basic-auth app): as the admin,
   create the worker's and the API's users (``MLFLOW_WORKER_USERNAME``/``_PASSWORD``,
   ``MLFLOW_API_USERNAME``/``_PASSWORD``), or set their password again when it changed in ``.env``.
3. Work pools: every pool that ``prefect.yaml`` names, of the type its ``definitions.pool_types`` gives, created
   when missing (a pool nobody serves costs nothing; ``prefect deploy`` refuses a deployment whose pool is missing).
4. ``prefect deploy --all`` from ``prefect.yaml``; then each deployment is looked up on the server (the command
   is not trusted by its exit code alone: prefect 3.8.8 fails listing the pool's workers AFTER deploying), and any
   that is missing is deployed again by name.
5. The weekly retrain's schedule is active on ONE pool only: the one named by ``--retrain-pool``
   (``UKR_HW_BOOTSTRAP_RETRAIN_POOL``, default ``ukr-hw-process``); the retrain deployments on the other pools are
   paused, so a week never retrains twice. Set again on each run, so ``prefect deploy`` cannot undo it.
6. A first champion when the registry has none: ``--train worker`` (compose) runs the ``pipeline/default``
   deployment on the process worker and waits for it (a run already in flight is waited for, not doubled);
   ``--train local`` runs ``ukr-hw pipeline`` here; ``--train none`` only reports. It fails unless the registry
   then has a champion, so services that wait for this step (the API) start on a model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PLACEHOLDER = "change-me"
FIRST_CHAMPION_DEPLOYMENT = "pipeline/default"
RETRAIN_FLOW = "retrain"
DEFAULT_RETRAIN_POOL = "ukr-hw-process"
#: (username variable, default username, password variable) of the MLflow users the bootstrap keeps
MLFLOW_USERS = (
    ("MLFLOW_WORKER_USERNAME", "ukr-hw-worker", "MLFLOW_WORKER_PASSWORD"),
    ("MLFLOW_API_USERNAME", "ukr-hw-api", "MLFLOW_API_PASSWORD"),
)
FINAL_WAIT_POLL_S = 15.0


class BootstrapError(RuntimeError):
    """A step cannot be done; the message says what to fix."""


def log(msg: str) -> None:
    print(f"bootstrap: {msg}", flush=True)


# --- 1. the environment ----------------------------------------------------------------------------------------


def placeholder_problems(env: Mapping[str, str]) -> list[str]:
    """One line for each variable whose value still holds the ``change-me`` placeholder of .env.example."""
    return [
        f"{name} is still the placeholder {value!r} from .env.example: set a real value in .env"
        for name, value in sorted(env.items())
        if PLACEHOLDER in value
    ]


def check_environment(env: Mapping[str, str], tracking_uri: str) -> None:
    problems = placeholder_problems(env)
    if not env.get("PREFECT_API_URL"):
        problems.append("PREFECT_API_URL is not set: the bootstrap registers deployments on a Prefect server")
    if not tracking_uri.startswith(("http://", "https://")):
        problems.append(
            f"UKR_HW_MLFLOW_TRACKING_URI is {tracking_uri!r}: the bootstrap needs an MLflow server (http://…)"
        )
    if problems:
        raise BootstrapError("refusing to run:\n  " + "\n  ".join(problems))


# --- 2. MLflow users -------------------------------------------------------------------------------------------


def ensure_mlflow_users(tracking_uri: str, env: Mapping[str, str], http: Any = None) -> list[str]:
    """Create (or re-password) the MLflow users named in the environment, as MLflow's admin. Returns what it did."""
    admin_password = env.get("MLFLOW_ADMIN_PASSWORD")
    if not admin_password:
        log("MLFLOW_ADMIN_PASSWORD not set: MLflow users left alone (a server without the basic-auth app?)")
        return []
    import httpx

    admin = (env.get("MLFLOW_ADMIN_USERNAME") or "admin", admin_password)
    base = tracking_uri.rstrip("/")
    client = http or httpx.Client(timeout=30.0)
    done = []
    for user_var, default_user, password_var in MLFLOW_USERS:
        password = env.get(password_var)
        if not password:
            continue
        user = env.get(user_var) or default_user
        got = client.get(f"{base}/api/2.0/mlflow/users/get", params={"username": user}, auth=admin)
        if got.status_code in (401, 403):
            raise BootstrapError(
                f"MLflow at {base} refused the admin credentials (MLFLOW_ADMIN_USERNAME / MLFLOW_ADMIN_PASSWORD); "
                "the admin's password is set on the server's FIRST start only: use the one it was created with"
            )
        if got.status_code == 200:
            me = client.get(f"{base}/api/2.0/mlflow/users/current", auth=(user, password))
            if me.status_code == 200:
                done.append(f"{user}: exists")
                continue
            r = client.patch(
                f"{base}/api/2.0/mlflow/users/update-password",
                json={"username": user, "password": password},
                auth=admin,
            )
            _raise_for(r, f"setting the password of MLflow user {user} ({password_var})")
            done.append(f"{user}: password updated")
        elif got.status_code == 404:
            r = client.post(
                f"{base}/api/2.0/mlflow/users/create", json={"username": user, "password": password}, auth=admin
            )
            _raise_for(r, f"creating MLflow user {user} ({password_var}, at least 12 characters)")
            done.append(f"{user}: created")
        else:
            _raise_for(got, f"looking up MLflow user {user}")
    for line in done:
        log(f"MLflow user {line}")
    return done


def _raise_for(response: Any, what: str) -> None:
    if response.status_code >= 400:
        raise BootstrapError(f"{what} failed: HTTP {response.status_code} {response.text[:500]}")


# --- 3.-5. Prefect ---------------------------------------------------------------------------------------------


def load_spec(prefect_yaml: Path) -> dict[str, Any]:
    return yaml.safe_load(prefect_yaml.read_text(encoding="utf-8"))


def deployment_names(spec: Mapping[str, Any]) -> list[str]:
    """``flow/deployment`` of every deployment in prefect.yaml (the flows are named after their functions)."""
    return [f"{d['entrypoint'].rsplit(':', 1)[1]}/{d['name']}" for d in spec["deployments"]]


def pool_types(spec: Mapping[str, Any]) -> dict[str, str]:
    """Every pool the deployments name → its worker type (``definitions.pool_types``)."""
    types = (spec.get("definitions") or {}).get("pool_types") or {}
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    missing = sorted(p for p in pools if p not in types)
    if missing:
        raise BootstrapError(f"prefect.yaml: give the type of pool(s) {missing} under definitions.pool_types")
    return {p: types[p] for p in sorted(pools)}


def retrain_deployments(spec: Mapping[str, Any]) -> dict[str, str]:
    """``retrain/<name>`` → its pool, for the retrain deployments that have a schedule."""
    return {
        f"{RETRAIN_FLOW}/{d['name']}": d["work_pool"]["name"]
        for d in spec["deployments"]
        if d["entrypoint"].endswith(f":{RETRAIN_FLOW}") and d.get("schedules")
    }


def prefect_exe() -> str:
    here = Path(sys.executable).parent / "prefect"
    return str(here) if here.exists() else "prefect"


def run_prefect(*args: str, cwd: Path, env: Mapping[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [prefect_exe(), "--no-prompt", *args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _exists(read: Callable[[], Any]) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        read()
        return True
    except ObjectNotFound:
        return False


def ensure_work_pools(spec: Mapping[str, Any], cwd: Path, env: Mapping[str, str]) -> list[str]:
    created = []
    with _client() as client:
        for pool, kind in pool_types(spec).items():
            if _exists(lambda pool=pool: client.read_work_pool(pool)):
                continue
            proc = run_prefect("work-pool", "create", pool, "--type", kind, cwd=cwd, env=env, timeout=300)
            if proc.returncode != 0 and not _exists(lambda pool=pool: client.read_work_pool(pool)):
                raise BootstrapError(
                    f"creating work pool {pool} (type {kind}) failed:\n{(proc.stdout + proc.stderr)[-2000:]}"
                )
            created.append(pool)
            log(f"created work pool {pool} (type {kind})")
    return created


def missing_deployments(names: list[str]) -> list[str]:
    with _client() as client:
        return [n for n in names if not _exists(lambda n=n: client.read_deployment_by_name(n))]


def deploy_all(spec: Mapping[str, Any], cwd: Path, env: Mapping[str, str]) -> None:
    names = deployment_names(spec)
    proc = run_prefect("deploy", "--all", cwd=cwd, env=env)
    missing = missing_deployments(names)
    for name in list(missing):  # one by one: one broken deployment must not hide the others
        again = run_prefect("deploy", "--name", name, cwd=cwd, env=env)
        if not missing_deployments([name]):
            missing.remove(name)
        else:
            proc = again
    if missing:
        raise BootstrapError(f"`prefect deploy` did not register {missing}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    log(f"deployed {len(names)} deployments from {cwd / 'prefect.yaml'}: {', '.join(names)}")


def activate_retrain_schedule(spec: Mapping[str, Any], pool: str) -> dict[str, bool]:
    """Active schedules for the retrain deployment on ``pool``, paused ones for the others."""
    wanted = retrain_deployments(spec)
    if pool not in wanted.values():
        raise BootstrapError(
            f"no scheduled retrain deployment on pool {pool!r} in prefect.yaml; choose one of "
            f"{sorted(set(wanted.values()))} (UKR_HW_BOOTSTRAP_RETRAIN_POOL / RETRAIN_POOL in .env)"
        )
    result = {}
    with _client() as client:
        for name, its_pool in wanted.items():
            active = its_pool == pool
            deployment = client.read_deployment_by_name(name)
            for schedule in client.read_deployment_schedules(deployment.id):
                if schedule.active != active:
                    client.update_deployment_schedule(deployment.id, schedule.id, active=active)
            result[name] = active
    log("weekly retrain scheduled on " + ", ".join(n for n, a in result.items() if a) + f" (pool {pool})")
    return result


# --- 6. a first champion ---------------------------------------------------------------------------------------


def champion(settings: Any) -> str | None:
    """The champion's version, None when the registry has none; any other registry error is raised.

    The model is looked up first: MLflow's basic-auth app answers 403, not 404, for the alias of a model that does
    not exist yet (there is no permission to check), which must not read as "MLflow refused us".
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = settings.resolved_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if not client.search_registered_models(filter_string=f"name = '{settings.model_name}'"):
            return None
        mv = client.get_model_version_by_alias(settings.model_name, settings.champion_alias)
    except MlflowException as exc:
        text = str(exc)
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in text.lower():
            return None
        raise BootstrapError(f"asking MLflow at {uri} for the champion failed: {text[:500]}") from exc
    return str(mv.version)


def run_first_pipeline_on_worker(timeout_s: float, poll_s: float = FINAL_WAIT_POLL_S) -> str:
    """Run ``pipeline/default`` on its pool's worker (or join a run already in flight); wait; its final state."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with _client() as client:
        deployment = client.read_deployment_by_name(FIRST_CHAMPION_DEPLOYMENT)
        in_flight = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING])
                )
            ),
            limit=1,
        )
        if in_flight:
            run = in_flight[0]
            log(f"joining flow run {run.name} ({run.id}) of {FIRST_CHAMPION_DEPLOYMENT}, already in flight")
        else:
            run = client.create_flow_run_from_deployment(deployment.id, tags=["bootstrap"])
            log(f"started flow run {run.name} ({run.id}) of {FIRST_CHAMPION_DEPLOYMENT} on its worker")
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            run = client.read_flow_run(run.id)
            state = run.state
            if state is not None and state.name != last:
                last = state.name
                log(f"flow run {run.name}: {state.name}")
            if state is not None and state.is_final():
                return state.name
            if time.monotonic() > deadline:
                raise BootstrapError(
                    f"flow run {run.name} of {FIRST_CHAMPION_DEPLOYMENT} not finished after {timeout_s:.0f} s "
                    "(it goes on; run the bootstrap again to wait for it)"
                )
            time.sleep(poll_s)


def ensure_champion(settings: Any, mode: str, timeout_s: float, env: Mapping[str, str], cwd: Path) -> str | None:
    version = champion(settings)
    if version is not None:
        log(f"champion is version {version} of {settings.model_name}: no training needed")
        return version
    if mode == "none":
        log("no champion yet, and --train none: the API will not start until one is promoted")
        return None
    log(f"no champion in the registry yet: training a first one ({mode})")
    if mode == "worker":
        final = run_first_pipeline_on_worker(timeout_s)
        if final != "Completed":
            raise BootstrapError(
                f"the first {FIRST_CHAMPION_DEPLOYMENT} run ended {final}: see its logs in Prefect "
                "(`docker compose logs prefect-worker`)"
            )
    else:
        proc = subprocess.run(["ukr-hw", "pipeline"], cwd=cwd, env=dict(env), timeout=timeout_s)
        if proc.returncode != 0:
            raise BootstrapError(f"`ukr-hw pipeline` exited {proc.returncode}")
    version = champion(settings)
    if version is None:
        raise BootstrapError(
            "the first pipeline finished but the registry has no champion: see `ukr-hw models` for the gate's verdict"
        )
    log(f"champion is version {version} of {settings.model_name}")
    return version


# --- main ------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="bootstrap", description=__doc__.split("\n", 1)[0])
    p.add_argument(
        "--train",
        choices=["worker", "local", "none"],
        default=env.get("UKR_HW_BOOTSTRAP_TRAIN", "worker"),
        help="how to train a first champion when there is none (default: worker; env UKR_HW_BOOTSTRAP_TRAIN)",
    )
    p.add_argument(
        "--retrain-pool",
        default=env.get("UKR_HW_BOOTSTRAP_RETRAIN_POOL") or DEFAULT_RETRAIN_POOL,
        help="the work pool whose weekly retrain schedule is active (env UKR_HW_BOOTSTRAP_RETRAIN_POOL)",
    )
    p.add_argument(
        "--train-timeout",
        type=float,
        default=float(env.get("UKR_HW_BOOTSTRAP_TRAIN_TIMEOUT_S", 4 * 3600)),
        help="seconds to wait for the first training (default 4 h)",
    )
    p.add_argument("--code-dir", type=Path, default=Path(env.get("UKR_HW_CODE_DIR") or REPO))
    p.add_argument("--check-only", action="store_true", help="check the environment and stop")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ukr_hw.settings import get_settings

    settings = get_settings()
    code_dir = args.code_dir.resolve()
    env = dict(os.environ)
    env.setdefault("UKR_HW_CODE_DIR", str(code_dir))  # prefect.yaml's pull step and templates read these
    env.setdefault("UKR_HW_IMAGE", "ukr-hw:0.1.0")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        check_environment(env, settings.resolved_tracking_uri())
        if args.check_only:
            log("environment ok")
            return 0
        spec = load_spec(code_dir / "prefect.yaml")
        ensure_mlflow_users(settings.resolved_tracking_uri(), env)
        ensure_work_pools(spec, code_dir, env)
        deploy_all(spec, code_dir, env)
        activate_retrain_schedule(spec, args.retrain_pool)
        ensure_champion(settings, args.train, args.train_timeout, env, code_dir)
    except BootstrapError as exc:
        print(f"bootstrap: {exc}", file=sys.stderr, flush=True)
        return 2
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
