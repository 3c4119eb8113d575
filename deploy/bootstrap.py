"""Bootstrap a ukr-hw stack once its servers are up: users, work pools, deployments, schedules, the data
concurrency limit, the failure alert, a first champion.

    python deploy/bootstrap.py                   # what docker-compose.yml's one-shot `bootstrap` service runs
    .venv/bin/python deploy/bootstrap.py --train local   # natively, against any servers (see docs/deploy.md)

The steps live in the package, ``ukr_hw/ops/bootstrap/`` (``ukr-hw stack up`` runs the same ones); this script is
their command line for compose. Each step is idempotent (safe on every `docker compose up`):

1. refuse to go on while any variable of its environment still holds a ``change-me`` placeholder from
   ``.env.example`` (the message names the variable), or when ``PREFECT_API_URL`` / an MLflow server is missing;
2. MLflow users (with ``MLFLOW_ADMIN_PASSWORD``: MLflow's basic-auth app);
3. every work pool ``prefect.yaml`` names; 4. ``prefect deploy --all``, each deployment checked on the server;
5. the weekly retrain's schedule active on ``--retrain-pool`` only (``UKR_HW_BOOTSTRAP_RETRAIN_POOL``);
6. the global concurrency limit ``ukr-hw-data`` (one flow at a time uses data/processed);
7. with ``UKR_HW_ALERT_WEBHOOK_URL`` or ``UKR_HW_ALERT_BLOCK``: an automation that notifies a failed retrain;
8. a first champion when the registry has none: ``--train worker`` (compose) runs the ``pipeline/default``
   deployment on the process worker and waits for it (a run already in flight is waited for, not doubled);
   ``--train local`` runs ``ukr-hw pipeline`` here; ``--train none`` only reports. It fails unless the registry
   then has a champion, so services that wait for this step (the API) start on a model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ukr_hw.ops.bootstrap import (
    DEFAULT_RETRAIN_POOL,
    FIRST_CHAMPION_DEPLOYMENT,
    MLFLOW_USERS,
    PLACEHOLDER,
    TRAIN_MODES,
    BootstrapError,
    Plan,
    activate_retrain_schedule,
    check_environment,
    deploy_all,
    deployment_names,
    ensure_champion,
    ensure_mlflow_users,
    ensure_work_pools,
    log,
    placeholder_problems,
    pool_types,
    retrain_deployments,
    run,
)

REPO = Path(__file__).resolve().parents[1]  #: the checkout (/app in the image) whose prefect.yaml is deployed

__all__ = [
    "DEFAULT_RETRAIN_POOL",
    "FIRST_CHAMPION_DEPLOYMENT",
    "MLFLOW_USERS",
    "PLACEHOLDER",
    "BootstrapError",
    "activate_retrain_schedule",
    "build_parser",
    "check_environment",
    "deploy_all",
    "deployment_names",
    "ensure_champion",
    "ensure_mlflow_users",
    "ensure_work_pools",
    "main",
    "placeholder_problems",
    "pool_types",
    "retrain_deployments",
]


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="bootstrap", description=__doc__.split("\n", 1)[0])
    p.add_argument(
        "--train",
        choices=list(TRAIN_MODES),
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
    tracking_uri = settings.resolved_tracking_uri()
    try:
        if args.check_only:
            check_environment(env, tracking_uri)
            log("environment ok")
            return 0
        run(
            env,
            tracking_uri,
            model_name=settings.model_name,
            alias=settings.champion_alias,
            plan=Plan(
                train=args.train,
                retrain_pool=args.retrain_pool,
                train_timeout_s=args.train_timeout,
                code_dir=code_dir,
            ),
        )
    except BootstrapError as exc:
        print(f"bootstrap: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
