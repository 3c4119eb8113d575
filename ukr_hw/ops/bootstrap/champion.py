"""Bootstrap step 8: a first champion when the registry has none (trained on the worker, here, or only reported)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from ukr_hw.ops.bootstrap.common import BootstrapError, exe, log
from ukr_hw.ops.bootstrap.common import prefect_client as _client
from ukr_hw.ops.wait import NotReady, wait_until

FIRST_CHAMPION_DEPLOYMENT = "pipeline/default"
#: how a first champion is trained when there is none (see :func:`first_champion_action`)
TRAIN_MODES = ("worker", "local", "none")
FINAL_WAIT_POLL_S = 15.0


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
        run_id, name = run.id, run.name
        seen: list[str] = []  # the states logged so far

        def final_state() -> str | None:
            state = client.read_flow_run(run_id).state
            if state is not None and (not seen or state.name != seen[-1]):
                seen.append(state.name)
                log(f"flow run {name}: {state.name}")
            return state.name if state is not None and state.is_final() else None

        try:  # an error reading the run ends the wait (fatal): the bootstrap fails with it
            return wait_until(
                final_state, timeout=timeout_s, what=f"flow run {name}", interval=poll_s, fatal=(Exception,)
            )
        except NotReady:
            raise BootstrapError(
                f"flow run {name} of {FIRST_CHAMPION_DEPLOYMENT} not finished after {timeout_s:.0f} s "
                "(it goes on; run the bootstrap again to wait for it)"
            ) from None


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
        proc = subprocess.run([exe("ukr-hw"), "pipeline"], cwd=cwd, env=dict(env), timeout=timeout_s)
        if proc.returncode != 0:
            raise BootstrapError(f"`ukr-hw pipeline` exited {proc.returncode}")
    version = champion(tracking_uri, model_name, alias)
    if version is None:
        raise BootstrapError(
            "the first pipeline finished but the registry has no champion: see `ukr-hw models` for the gate's verdict"
        )
    log(f"champion is version {version} of {model_name}")
    return version
