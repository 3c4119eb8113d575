"""Bootstrap a ukr-hw stack once its servers are up: :func:`run` does every step, each idempotent (safe on every
start).

Used by ``deploy/bootstrap.py`` (docker-compose.yml's one-shot ``bootstrap`` service) and by ``ukr-hw stack up``
(:meth:`ukr_hw.ops.stack.Stack.bootstrap`). The steps, and the module of each:

1. Refuse to go on while a variable still holds a ``change-me`` placeholder from ``.env.example`` (the message
   names the variable), or when ``PREFECT_API_URL`` / an MLflow server is missing (:mod:`.environment`).
2. MLflow users (only when ``MLFLOW_ADMIN_PASSWORD`` is set, i.e. against MLflow's basic-auth app): as the admin,
   create the worker's and the API's users (``MLFLOW_WORKER_USERNAME``/``_PASSWORD``,
   ``MLFLOW_API_USERNAME``/``_PASSWORD``), or set their password again when it changed in ``.env``
   (:mod:`.environment`).
3. Work pools: every pool that ``prefect.yaml`` names, of the type its ``definitions.pool_types`` gives, created
   when missing (a pool nobody serves costs nothing; ``prefect deploy`` refuses a deployment whose pool is missing)
   (:mod:`.deployments`, as are 4, 5 and 7).
4. ``prefect deploy --all`` from ``prefect.yaml``; then each deployment is looked up on the server (the command
   is not trusted by its exit code alone: prefect 3.8.8 fails listing the pool's workers AFTER deploying), and any
   that is missing is deployed again by name.
5. The weekly retrain's schedule is active on ONE pool only (``retrain_pool``); the retrain deployments on the
   other pools are paused, so a week never retrains twice. Set again on each run, so ``prefect deploy`` cannot
   undo it.
6. The global concurrency limit :data:`~ukr_hw.ops.locks.DATA_LIMIT` (one slot) that the flows hold while they use
   ``data/processed`` (:func:`ukr_hw.ops.locks.data_lock`).
7. A failure of the weekly retrain is told: with ``UKR_HW_ALERT_WEBHOOK_URL`` (a webhook that takes
   ``{"text": …}`` JSON: Slack, Mattermost, Rocket.Chat, …) the notification block :data:`ALERT_BLOCK` is saved
   from it; or ``UKR_HW_ALERT_BLOCK=<block-type-slug>/<name>`` names a notification block made in the Prefect UI
   (email, Teams, PagerDuty, Discord, …). The automation :data:`FAILURE_AUTOMATION` then sends a notification
   whenever a run of the ``retrain`` flow ends Failed, Crashed or TimedOut. Without either, no automation is made
   (failed runs show in the Prefect UI only) and the step says so.
8. A first champion when the registry has none (:func:`first_champion_action`, :mod:`.champion`):
   ``train="worker"`` runs the ``pipeline/default`` deployment on the process worker and waits for it (a run
   already in flight is waited for, not doubled); ``"local"`` runs ``ukr-hw pipeline`` here; ``"none"`` only
   reports. After training it fails unless the registry then has a champion, so services that wait for this step
   (the API) start on a model.

What the flows use at run time lives beside it: :mod:`ukr_hw.ops.locks` (the data lock) and
:mod:`ukr_hw.ops.retries` (the retry condition of their network-bound tasks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ukr_hw.ops import REPO
from ukr_hw.ops.bootstrap.champion import (
    FIRST_CHAMPION_DEPLOYMENT,
    TRAIN_MODES,
    champion,
    ensure_champion,
    first_champion_action,
    run_first_pipeline_on_worker,
)
from ukr_hw.ops.bootstrap.common import BootstrapError, log
from ukr_hw.ops.bootstrap.deployments import (
    ALERT_BLOCK,
    DEFAULT_RETRAIN_POOL,
    FAILURE_AUTOMATION,
    activate_retrain_schedule,
    deploy_all,
    deployment_names,
    ensure_failure_alert,
    ensure_work_pools,
    load_spec,
    pool_types,
    prefect_api,
    retrain_deployments,
)
from ukr_hw.ops.bootstrap.environment import (
    MLFLOW_USERS,
    PLACEHOLDER,
    check_environment,
    ensure_mlflow_users,
    placeholder_problems,
    settings_placeholder_problems,
)
from ukr_hw.ops.locks import DATA_LIMIT, ensure_data_limit

__all__ = [
    "ALERT_BLOCK",
    "DATA_LIMIT",
    "DEFAULT_RETRAIN_POOL",
    "FAILURE_AUTOMATION",
    "FIRST_CHAMPION_DEPLOYMENT",
    "MLFLOW_USERS",
    "PLACEHOLDER",
    "TRAIN_MODES",
    "BootstrapError",
    "Plan",
    "activate_retrain_schedule",
    "champion",
    "check_environment",
    "deploy_all",
    "deployment_names",
    "ensure_champion",
    "ensure_failure_alert",
    "ensure_mlflow_users",
    "ensure_work_pools",
    "first_champion_action",
    "log",
    "placeholder_problems",
    "pool_types",
    "retrain_deployments",
    "run",
    "run_first_pipeline_on_worker",
    "settings_placeholder_problems",
]


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
