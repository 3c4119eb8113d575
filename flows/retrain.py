"""The weekly retrain flow: feedback → validated samples → the raw snapshot ``data/raw/feedback`` → the prepare flow
(every raw source → TRAIN + the user-drawings test set → DVC data version) → fine-tune from the champion → evaluate
→ register / promote under the gate → lineage → tell the API to reload.

Thin: every task is one call into :mod:`ukr_hw.retraining`; the data is built by the same prepare flow as always
(a subflow), so what a retrain trained on is what ``ukr-hw prepare`` rebuilds from data/raw. With no new valid
samples it ends early and says so. Deployed by ``prefect.yaml`` as ``retrain/weekly`` (Monday 03:00 Europe/Kyiv).

Operations: the flow holds the data lock (:func:`ukr_hw.ops.locks.data_lock`) while it adds to ``data/raw/feedback``,
rebuilds and versions ``data/processed`` and fine-tunes on it; the network-bound tasks retry with back-off and have
timeouts: reading the feedback bucket, the DVC push, registering (transient errors only:
:func:`ukr_hw.ops.retries.retry_if_transient`) and the API reload (which ends with a warning, never a failure: the
API's registry poll finds the champion too).
A failed run is told by the bootstrap's automation (docs/deploy.md).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.prepare import dvc_version as version  # noqa: F401  the task that versions the data (via prepare)
from flows.prepare import prepare
from ukr_hw import retraining
from ukr_hw.feedback import FeedbackStore
from ukr_hw.ops.locks import data_lock
from ukr_hw.ops.retries import last_try, retry_if_transient
from ukr_hw.settings import Settings, get_settings


@task(
    name="collect-feedback",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[10, 60, 180],
    retry_condition_fn=retry_if_transient,  # S3 unreachable; a sample is only quarantined once it was read
    timeout_seconds=1800,
)
def collect(settings: Settings) -> retraining.Collected:
    return retraining.collect(FeedbackStore.from_settings(settings), settings)


@task(
    name="ingest-feedback",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[10, 60, 180],
    retry_condition_fn=retry_if_transient,  # it may read samples back from S3; the snapshot is idempotent
    timeout_seconds=1800,
)
def ingest_feedback(collected: retraining.Collected, settings: Settings) -> dict[str, int]:
    return retraining.ingest(collected, settings, FeedbackStore.from_settings(settings))


@task(name="finetune", cache_policy=NO_CACHE)
def finetune(config_path: str | None, overrides: dict[str, Any] | None, settings: Settings) -> dict[str, Any]:
    return retraining.finetune_with_feedback(config_path, overrides, settings)


@task(
    name="register",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[30, 120],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=1800,
)
def register(
    trained: dict[str, Any], data_version: str, collected: retraining.Collected, settings: Settings
) -> dict[str, Any]:
    return retraining.register(trained, data_version, collected, retraining.feedback_in_data(settings), settings)


class ApiNotReloaded(RuntimeError):
    """The API did not confirm the reload; raised to try again while tries are left."""


@task(name="reload-api", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 8], timeout_seconds=120)
def reload_api(settings: Settings) -> dict[str, Any]:
    answer = retraining.notify_api(settings)
    if not answer["reloaded"] and not last_try():
        raise ApiNotReloaded(answer.get("warning") or "the API did not reload")
    return answer  # after the last try: the warning, as before


@flow(name="retrain", log_prints=True)
def retrain(config_path: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Learn from new feedback; returns a summary (``status``: ``no_new_samples`` or ``retrained``)."""
    logger = get_run_logger()
    settings = get_settings()
    with data_lock(settings, "retrain"):  # it adds to data/processed, versions it and fine-tunes on it
        collected = collect(settings)
        summary: dict[str, Any] = {
            "new_samples": len(collected.samples),
            "quarantined": collected.quarantined,
            "deferred": len(collected.deferred),  # over their source's share: a later retrain takes them
        }
        if len(collected.samples) < settings.retrain_min_samples:
            logger.info(
                "no retraining: %d new valid feedback samples (need %d), %d quarantined",
                len(collected.samples),
                settings.retrain_min_samples,
                len(collected.quarantined),
            )
            return {"status": "no_new_samples", **summary}
        summary["ingested"] = ingest_feedback(collected, settings)
        prepared = prepare(push=settings.dvc_push)  # a subflow: the data lock is re-entrant
        summary["data_sizes"] = {"train": prepared["train"], "user_test": prepared["feedback"]["user_test"]}
        data_version = prepared["data_version"]
        trained = finetune(str(config_path) if config_path else None, overrides, settings)
        registration = register(trained, data_version, collected, settings)
        summary.update(
            status="retrained",
            data_version=data_version,
            test_metrics=_pick(trained["report"].metrics),
            user_test_metrics=_pick(trained["user_report"].metrics) if trained["user_report"] else None,
            champion_user_test_metrics=_pick(trained["champion_user_report"].metrics)
            if trained["champion_user_report"]
            else None,
            previous_champion=trained["champion_version"],
            **registration,
        )
        summary["api"] = (
            reload_api(settings) if registration["promoted"] else {"reloaded": False, "reason": "not promoted"}
        )
        logger.info(
            "retrained on %d new samples: model v%s, %s",
            summary["new_samples"],
            registration["model_version"],
            registration["reason"],
        )
        return summary


def _pick(metrics: dict[str, float]) -> dict[str, float]:
    keys = ("symbol_accuracy", "case_accuracy")
    return {k: round(float(metrics[k]), 4) for k in keys if k in metrics}


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(retrain(), ensure_ascii=False, default=str))
