"""Bootstrap steps 3-5 and 7, on the Prefect server: work pools, ``prefect deploy --all`` (each deployment checked),
the weekly retrain's schedule active on one pool, and the automation that tells a failed retrain."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from ukr_hw.ops.bootstrap.common import BootstrapError, exe, log
from ukr_hw.ops.bootstrap.common import prefect_client as _client

RETRAIN_FLOW = "retrain"
DEFAULT_RETRAIN_POOL = "ukr-hw-process"
#: the notification block the bootstrap saves from UKR_HW_ALERT_WEBHOOK_URL
ALERT_BLOCK = "ukr-hw-alerts"
FAILURE_AUTOMATION = "ukr-hw: retrain failed"
#: final flow-run states that count as a failure (TimedOut is a Failed-type state of its own name)
FAILED_STATES = ("Failed", "Crashed", "TimedOut")

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


def prefect_exe() -> str:
    return exe("prefect")


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
        description="Made by ukr-hw's bootstrap (ukr_hw/ops/bootstrap/): tells when a weekly retrain fails.",
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
