"""Bootstrap a ukr-hw stack once its servers are up, and the operational rules its flows follow.

Used by ``deploy/bootstrap.py`` (docker-compose.yml's one-shot ``bootstrap`` service) and by ``ukr-hw stack up``
(:meth:`ukr_hw.stack.Stack.up`); :func:`run` does the steps, each idempotent (safe on every start):

1. Refuse to go on while a variable still holds a ``change-me`` placeholder from ``.env.example`` (the message
   names the variable), or when ``PREFECT_API_URL`` / an MLflow server is missing.
2. MLflow users (only when ``MLFLOW_ADMIN_PASSWORD`` is set, i.e. against MLflow's basic-auth app): as the admin,
   create the worker's and the API's users (``MLFLOW_WORKER_USERNAME``/``_PASSWORD``,
   ``MLFLOW_API_USERNAME``/``_PASSWORD``), or set their password again when it changed in ``.env``.
3. Work pools: every pool that ``prefect.yaml`` names, of the type its ``definitions.pool_types`` gives, created
   when missing (a pool nobody serves costs nothing; ``prefect deploy`` refuses a deployment whose pool is missing).
4. ``prefect deploy --all`` from ``prefect.yaml``; then each deployment is looked up on the server (the command
   is not trusted by its exit code alone: prefect 3.8.8 fails listing the pool's workers AFTER deploying), and any
   that is missing is deployed again by name.
5. The weekly retrain's schedule is active on ONE pool only (``retrain_pool``); the retrain deployments on the
   other pools are paused, so a week never retrains twice. Set again on each run, so ``prefect deploy`` cannot
   undo it.
6. The global concurrency limit :data:`DATA_LIMIT` (one slot) that the flows hold while they use
   ``data/processed`` (:func:`data_lock`).
7. A failure of the weekly retrain is told: with ``UKR_HW_ALERT_WEBHOOK_URL`` (a webhook that takes
   ``{"text": …}`` JSON: Slack, Mattermost, Rocket.Chat, …) the notification block :data:`ALERT_BLOCK` is saved
   from it; or ``UKR_HW_ALERT_BLOCK=<block-type-slug>/<name>`` names a notification block made in the Prefect UI
   (email, Teams, PagerDuty, Discord, …). The automation :data:`FAILURE_AUTOMATION` then sends a notification
   whenever a run of the ``retrain`` flow ends Failed, Crashed or TimedOut. Without either, no automation is made
   (failed runs show in the Prefect UI only) and the step says so.
8. A first champion when the registry has none (:func:`first_champion_action`): ``train="worker"`` runs the
   ``pipeline/default`` deployment on the process worker and waits for it (a run already in flight is waited for,
   not doubled); ``"local"`` runs ``ukr-hw pipeline`` here; ``"none"`` only reports. After training it fails
   unless the registry then has a champion, so services that wait for this step (the API) start on a model.

For the flows (``flows/*.py``): :func:`data_lock`, the one concurrency limit that keeps prepare, train, retrain and
tune (and the pipeline around prepare and train) from using ``data/processed`` at once, and
:func:`retry_if_transient`, the retry condition of their network-bound tasks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: the checkout this package runs from (prefect.yaml lives here)
REPO = Path(__file__).resolve().parents[1]

PLACEHOLDER = "change-me"
FIRST_CHAMPION_DEPLOYMENT = "pipeline/default"
RETRAIN_FLOW = "retrain"
DEFAULT_RETRAIN_POOL = "ukr-hw-process"
#: how a first champion is trained when there is none (see :func:`first_champion_action`)
TRAIN_MODES = ("worker", "local", "none")
#: (username variable, default username, password variable) of the MLflow users the bootstrap keeps
MLFLOW_USERS = (
    ("MLFLOW_WORKER_USERNAME", "ukr-hw-worker", "MLFLOW_WORKER_PASSWORD"),
    ("MLFLOW_API_USERNAME", "ukr-hw-api", "MLFLOW_API_PASSWORD"),
)
FINAL_WAIT_POLL_S = 15.0
#: the Prefect global concurrency limit (one slot) held by every flow that uses data/processed
DATA_LIMIT = "ukr-hw-data"
#: the file lock beside the data (under ``settings.cache_dir``) that does the same on one machine
DATA_LOCK_FILE = "data.lock"
#: the notification block the bootstrap saves from UKR_HW_ALERT_WEBHOOK_URL
ALERT_BLOCK = "ukr-hw-alerts"
FAILURE_AUTOMATION = "ukr-hw: retrain failed"
#: final flow-run states that count as a failure (TimedOut is a Failed-type state of its own name)
FAILED_STATES = ("Failed", "Crashed", "TimedOut")

_log = logging.getLogger(__name__)


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


def settings_placeholder_problems(settings: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line for each ukr-hw setting (``UKR_HW_<NAME>``, from the environment or ``.env``) that still holds the
    ``change-me`` placeholder: ``.env.example`` copied for compose would otherwise hand the native stack its
    placeholder admin token or S3 key."""
    environ = os.environ if environ is None else environ
    problems = []
    for name in sorted(type(settings).model_fields):
        value = getattr(settings, name)
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if not isinstance(text, str | Path) or PLACEHOLDER not in str(text):
            continue
        var = f"UKR_HW_{name.upper()}"
        where = "the environment" if var in environ else ".env"
        problems.append(
            f"{var} is still the placeholder {str(text)!r} (from {where}): set a real value, or unset it "
            "(`ukr-hw stack` generates its own secrets)"
        )
    return problems


def check_environment(env: Mapping[str, str], tracking_uri: str | None) -> None:
    """Raise :class:`BootstrapError` listing every placeholder, and a missing Prefect or MLflow server.

    ``tracking_uri`` None: no MLflow step will run (``ukr-hw stack up`` without mlflow), so it is not checked.
    """
    problems = placeholder_problems(env)
    if not env.get("PREFECT_API_URL"):
        problems.append("PREFECT_API_URL is not set: the bootstrap registers deployments on a Prefect server")
    if tracking_uri is not None and not tracking_uri.startswith(("http://", "https://")):
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


# --- 3.-5. Prefect deployments ---------------------------------------------------------------------------------


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


def _exe(name: str) -> str:
    """``name`` from this interpreter's environment (``.venv/bin``), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def prefect_exe() -> str:
    return _exe("prefect")


def run_prefect(*args: str, cwd: Path, env: Mapping[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [prefect_exe(), "--no-prompt", *args], cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def prefect_api(env: Mapping[str, str]) -> Iterator[None]:
    """This process's Prefect client settings pointed at ``env``'s server (``PREFECT_API_URL``, auth string), so
    the steps below talk to the same server as the ``prefect`` commands they run with ``env``."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: env["PREFECT_API_URL"]}
    if env.get("PREFECT_API_AUTH_STRING"):
        updates[PREFECT_API_AUTH_STRING] = env["PREFECT_API_AUTH_STRING"]
    with temporary_settings(updates=updates):
        yield


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


# --- 6. the data concurrency limit -----------------------------------------------------------------------------


def ensure_data_limit(client: Any = None) -> bool:
    """The global concurrency limit :data:`DATA_LIMIT` with one active slot; True when it was created or fixed."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with contextlib.ExitStack() as stack:
        client = client or stack.enter_context(_client())
        try:
            current = client.read_global_concurrency_limit_by_name(DATA_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=DATA_LIMIT, limit=1))
            except ObjectAlreadyExists:  # a flow made it meanwhile
                return False
            return True
        if current.limit != 1 or not current.active:
            client.update_global_concurrency_limit(DATA_LIMIT, GlobalConcurrencyLimitUpdate(limit=1, active=True))
            return True
        return False


# --- 7. telling a failed weekly run ----------------------------------------------------------------------------


def alert_block_id(env: Mapping[str, str]) -> Any:
    """The notification block failures go to (its id), or None when the environment names none."""
    url = (env.get("UKR_HW_ALERT_WEBHOOK_URL") or "").strip()
    ref = (env.get("UKR_HW_ALERT_BLOCK") or "").strip()
    if url:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        block = CustomWebhookNotificationBlock(name="ukr-hw", url=url, json_data={"text": "{{subject}}\n{{body}}"})
        return block.save(ALERT_BLOCK, overwrite=True)
    if ref:
        slug, sep, name = ref.partition("/")
        if not sep or not slug or not name:
            raise BootstrapError(
                f"UKR_HW_ALERT_BLOCK is {ref!r}: give <block-type-slug>/<block-name>, e.g. slack-webhook/ops"
            )
        from prefect.exceptions import ObjectNotFound

        with _client() as client:
            try:
                doc = client.read_block_document_by_name(name=name, block_type_slug=slug)
            except ObjectNotFound:
                raise BootstrapError(
                    f"UKR_HW_ALERT_BLOCK: no block {name!r} of type {slug!r} on the Prefect server; make it in the "
                    "Prefect UI (Blocks → +) first"
                ) from None
        schema = getattr(doc, "block_schema", None)
        if schema is not None and "notify" not in (schema.capabilities or []):
            raise BootstrapError(f"UKR_HW_ALERT_BLOCK: {ref} is not a notification block (it cannot notify)")
        return doc.id
    return None


def failure_automation(block_document_id: Any) -> Any:
    """The automation: a run of the ``retrain`` flow (any deployment, any pool) ends Failed/Crashed/TimedOut →
    a notification through the block."""
    from datetime import timedelta

    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    trigger = EventTrigger(
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": RETRAIN_FLOW},
        expect={f"prefect.flow-run.{state}" for state in FAILED_STATES},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )
    action = SendNotification(
        block_document_id=block_document_id,
        subject="ukr-hw: the {{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}",
        body=(
            "Flow run {{ flow.name }}/{{ flow_run.name }} (deployment {{ deployment.name }}) entered "
            "{{ flow_run.state.name }} at {{ flow_run.state.timestamp }}.\n"
            "Message: {{ flow_run.state.message }}\n"
            "Its logs: {{ flow_run|ui_url }} (`ukr-hw models` shows what the registry holds)"
        ),
    )
    return AutomationCore(
        name=FAILURE_AUTOMATION,
        description="Made by ukr-hw's bootstrap (ukr_hw/bootstrap.py): tells when a weekly retrain fails.",
        enabled=True,
        trigger=trigger,
        actions=[action],
    )


def ensure_failure_alert(env: Mapping[str, str]) -> Any:
    """Create or update :data:`FAILURE_AUTOMATION` when the environment names where to send alerts; its id."""
    block_id = alert_block_id(env)
    if block_id is None:
        log(
            "no UKR_HW_ALERT_WEBHOOK_URL or UKR_HW_ALERT_BLOCK: a failed weekly retrain shows in the Prefect UI "
            "only (Runs, state Failed); see docs/deploy.md to be told"
        )
        return None
    automation = failure_automation(block_id)
    with _client() as client:
        existing = client.read_automations_by_name(FAILURE_AUTOMATION)
        if existing:
            client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:
                client.delete_automation(extra.id)
            automation_id = existing[0].id
        else:
            automation_id = client.create_automation(automation)
    log(f"automation {FAILURE_AUTOMATION!r}: a failed {RETRAIN_FLOW} run sends a notification")
    return automation_id


# --- 8. a first champion ---------------------------------------------------------------------------------------


def champion(tracking_uri: str, model_name: str, alias: str = "champion") -> str | None:
    """The champion's version, None when the registry has none; any other registry error is raised.

    The model is looked up first: MLflow's basic-auth app answers 403, not 404, for the alias of a model that does
    not exist yet (there is no permission to check), which must not read as "MLflow refused us".
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
            return None
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        text = str(exc)
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in text.lower():
            return None
        raise BootstrapError(f"asking MLflow at {tracking_uri} for the champion failed: {text[:500]}") from exc
    return str(mv.version)


def first_champion_action(version: str | None, mode: str, worker: bool = True) -> str:
    """What the bootstrap does about a first champion: ``"keep"`` (there is one), ``"train-worker"``,
    ``"train-local"``, or ``"report"`` (none, and ``mode`` is ``none``, or ``worker`` with no worker to run it)."""
    if mode not in TRAIN_MODES:
        raise BootstrapError(f"unknown training mode {mode!r}: choose one of {', '.join(TRAIN_MODES)}")
    if version is not None:
        return "keep"
    if mode == "none" or (mode == "worker" and not worker):
        return "report"
    return f"train-{mode}"


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


def ensure_champion(
    tracking_uri: str,
    model_name: str,
    alias: str,
    mode: str,
    timeout_s: float,
    env: Mapping[str, str],
    cwd: Path,
    worker: bool = True,
) -> str | None:
    version = champion(tracking_uri, model_name, alias)
    action = first_champion_action(version, mode, worker)
    if action == "keep":
        log(f"champion is version {version} of {model_name}: no training needed")
        return version
    if action == "report":
        why = "training mode none (--train / UKR_HW_BOOTSTRAP_TRAIN)" if mode == "none" else "no worker runs"
        log(
            f"no champion yet, and {why}: nothing serves until one is promoted "
            "(`ukr-hw pipeline`, or `prefect deployment run pipeline/default` with a worker)"
        )
        return None
    log(f"no champion in the registry yet: training a first one ({mode})")
    if action == "train-worker":
        final = run_first_pipeline_on_worker(timeout_s)
        if final != "Completed":
            raise BootstrapError(
                f"the first {FIRST_CHAMPION_DEPLOYMENT} run ended {final}: see its logs in Prefect "
                "(`docker compose logs prefect-worker`, or .stack/logs/worker.log for `ukr-hw stack`)"
            )
    else:
        proc = subprocess.run([_exe("ukr-hw"), "pipeline"], cwd=cwd, env=dict(env), timeout=timeout_s)
        if proc.returncode != 0:
            raise BootstrapError(f"`ukr-hw pipeline` exited {proc.returncode}")
    version = champion(tracking_uri, model_name, alias)
    if version is None:
        raise BootstrapError(
            "the first pipeline finished but the registry has no champion: see `ukr-hw models` for the gate's verdict"
        )
    log(f"champion is version {version} of {model_name}")
    return version


# --- all steps -------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What :func:`run` does beyond the fixed steps."""

    train: str = "worker"  #: how to train a first champion when there is none (TRAIN_MODES)
    retrain_pool: str = DEFAULT_RETRAIN_POOL  #: the pool whose weekly retrain schedule is active
    train_timeout_s: float = 4 * 3600
    code_dir: Path = field(default_factory=lambda: REPO)  #: where prefect.yaml is (deployed from here)
    mlflow_users: bool = True  #: keep MLflow's users (compose: the basic-auth app; the native stack has none)
    worker: bool = True  #: a process worker serves the stack's pool (``train="worker"`` needs one)


def run(
    env: Mapping[str, str],
    tracking_uri: str | None,
    model_name: str = "ukr-hw",
    alias: str = "champion",
    plan: Plan | None = None,
    check_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every step, against the Prefect server of ``env["PREFECT_API_URL"]`` and the MLflow at ``tracking_uri``
    (None: no MLflow step). ``env`` is the environment of the commands it runs; ``check_env`` (default ``env``)
    the variables checked for placeholders. Returns what it found and did."""
    plan = plan or Plan()
    check_environment(env if check_env is None else check_env, tracking_uri)
    if plan.train not in TRAIN_MODES:
        raise BootstrapError(f"unknown training mode {plan.train!r}: choose one of {', '.join(TRAIN_MODES)}")
    code_dir = Path(plan.code_dir).resolve()
    spec = load_spec(code_dir / "prefect.yaml")
    report: dict[str, Any] = {}
    with prefect_api(env):
        if plan.mlflow_users and tracking_uri is not None:
            report["mlflow_users"] = ensure_mlflow_users(tracking_uri, env)
        report["work_pools_created"] = ensure_work_pools(spec, code_dir, env)
        deploy_all(spec, code_dir, env)
        report["deployments"] = deployment_names(spec)
        report["retrain_schedules"] = activate_retrain_schedule(spec, plan.retrain_pool)
        ensure_data_limit()
        log(f"concurrency limit {DATA_LIMIT}: one flow at a time uses data/processed")
        report["failure_automation"] = ensure_failure_alert(env)
        if tracking_uri is None:
            log("no MLflow server in this stack: the first-champion step is skipped")
            report["champion"] = None
        else:
            report["champion"] = ensure_champion(
                tracking_uri, model_name, alias, plan.train, plan.train_timeout_s, env, code_dir, plan.worker
            )
    log("done")
    return report


# --------------------------------------------------------------------------------------------------------------
# For the flows: retries of network-bound tasks


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


#: what DVC prints when its remote is briefly unreachable or overloaded (it runs as a subprocess: text is all)
_TRANSIENT_TEXT = (
    "connection refused",
    "connection reset",
    "connection aborted",
    "could not connect",
    "connect timeout",
    "timed out",
    "took longer than",
    "temporary failure in name resolution",
    "endpointconnectionerror",
    "service unavailable",
    "slowdown",
    "503",
    "502",
    "504",
)


def is_transient(exc: BaseException) -> bool:
    """True for an error that a later try may not meet: the network (refused, reset, timed out, DNS), HTTP 429 or
    5xx, MLflow's "temporarily unavailable", a DVC command that failed for one of these. Configuration errors (a
    missing mirror, a wrong checksum, HTTP 4xx, refused credentials) are not: they fail at once, clearly."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionError | TimeoutError | socket.timeout | socket.gaierror):
            return True
        if isinstance(exc, subprocess.TimeoutExpired):
            return True
        module = type(exc).__module__.split(".", 1)[0]
        names = {c.__name__ for c in type(exc).__mro__}
        status = _http_status(exc)
        if status is not None and (status == 429 or status >= 500):
            return True
        if module in ("httpx", "httpcore") and names & {"TransportError", "TimeoutException", "NetworkError"}:
            return True
        if module in ("requests", "urllib3") and names & {
            "ConnectionError",
            "Timeout",
            "ProtocolError",
            "NewConnectionError",
            "MaxRetryError",
            "RetryError",  # requests gave up on HTTP 429/5xx (MLflow's client retries those itself first)
            "TimeoutError",
        }:
            return True
        if module == "botocore" and names & {"ConnectionError", "HTTPClientError"}:
            return True
        # (not INTERNAL_ERROR: every MlflowException raised without a code has it)
        if module == "mlflow" and getattr(exc, "error_code", None) in (
            "TEMPORARILY_UNAVAILABLE",
            "REQUEST_LIMIT_EXCEEDED",
        ):
            return True
        if type(exc).__name__ == "VersioningError" and any(t in str(exc).lower() for t in _TRANSIENT_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed network-bound task only for a transient error."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return is_transient(data)
    try:
        state.result()
    except BaseException as exc:  # the task's own exception
        return is_transient(exc)
    return False


def last_try() -> bool:
    """True inside the last try a Prefect task has (or outside any task run)."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    if ctx is None:
        return True
    return ctx.task_run.run_count > (ctx.task.retries or 0)


# --------------------------------------------------------------------------------------------------------------
# For the flows: the data lock

#: per lock file: [the in-process lock (re-entrant: the pipeline holds it around its prepare and train), depth]
_held: dict[str, list[Any]] = {}
_held_guard = threading.Lock()


def data_lock_path(settings: Any) -> Path:
    """The lock file beside the data: ``<cache_dir>/data.lock`` (not versioned by DVC or git)."""
    return settings.path(settings.cache_dir) / DATA_LOCK_FILE


def _say(msg: str) -> None:
    try:
        from prefect.logging import get_run_logger

        get_run_logger().info(msg)
    except Exception:
        _log.info(msg)


@contextlib.contextmanager
def _file_lock(path: Path, holder: str) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                who = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            except OSError:
                who = "another process"
            _say(f"waiting for {path}: data/processed is in use by {who}")
            fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel frees it when the holder exits, however it ends
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.pwrite(fd, json.dumps({"holder": holder, "pid": os.getpid(), "since": since}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _server_limit(holder: str) -> Iterator[None]:
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        # Prefect's embedded API (the README's commands without a server): each process runs its own temporary
        # server, and a slot held by a process that dies (Ctrl-C stops its server too) would never be given back.
        # The file lock alone guards the data there.
        yield
        return
    from prefect.concurrency.sync import concurrency

    ensure_data_limit()
    _say(f"{holder}: taking the slot of Prefect's concurrency limit {DATA_LIMIT}")
    with concurrency(DATA_LIMIT, occupy=1, strict=True):
        yield


@contextlib.contextmanager
def data_lock(settings: Any, holder: str) -> Iterator[None]:
    """Hold the one data lock while a flow uses ``data/processed``: prepare, train, retrain and tune wait for each
    other instead of writing (or reading) it at once.

    Two layers, taken in this order: a file lock (``flock``) on :func:`data_lock_path` (every process on this
    machine and its containers on the same volume; freed by the kernel however the holder ends, so it works on
    the embedded Prefect API too), and, against a Prefect server (``PREFECT_API_URL``), a slot of the global
    concurrency limit :data:`DATA_LIMIT` (workers on other machines; a crashed holder's lease expires). Re-entrant
    in one process: the pipeline holds it around its prepare and train subflows.
    """
    path = data_lock_path(settings)
    key = str(path.resolve())
    with _held_guard:
        entry = _held.setdefault(key, [threading.RLock(), 0])
    with entry[0]:
        if entry[1] > 0:  # this process holds it already (a subflow of the pipeline)
            entry[1] += 1
            try:
                yield
            finally:
                entry[1] -= 1
            return
        with _file_lock(path, holder), _server_limit(holder):
            entry[1] = 1
            try:
                yield
            finally:
                entry[1] = 0
