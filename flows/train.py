"""The train flow: pretrain on MNIST (cached) → fine-tune → evaluate → log, register and maybe promote.

Thin: each task is one call into :mod:`ukr_hw.training` / :mod:`ukr_hw.registry`. Everything happens inside one
MLflow run, so per-epoch fine-tune metrics, the evaluation figures and the registered model sit together. The
flow holds the data lock (:func:`ukr_hw.ops.locks.data_lock`: no prepare or retrain rewrites ``data/processed``
under it); registering retries a transient registry failure (a retry after a partial registration registers one
more version, which the gate judges like any other).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ukr_hw import registry, training
from ukr_hw.data import versioning
from ukr_hw.ops.locks import data_lock
from ukr_hw.ops.retries import retry_if_transient
from ukr_hw.settings import Settings, get_settings
from ukr_hw.training import PretrainResult, TrainConfig


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain_task(config: TrainConfig, settings: Settings) -> tuple[Any, PretrainResult]:
    return training.pretrain(config, settings)


@task(name="finetune", cache_policy=NO_CACHE)
def finetune_task(config: TrainConfig, settings: Settings, init: Any, make_logger: Any = None) -> tuple[Any, Any]:
    return training.finetune(config, settings, init=init, make_logger=make_logger)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(report: Any, settings: Settings) -> dict[str, str]:
    registry.log_eval(report, "test")
    return {k: str(v) for k, v in training.save_reports(report, settings).items()}


@task(
    name="register",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[30, 120],
    retry_condition_fn=retry_if_transient,
    timeout_seconds=1800,
)
def register_task(net: Any, report: Any, data_version: str | None, params: dict) -> registry.Registration:
    return registry.log_model_and_register(net, report=report, data_version=data_version, params=params)


@flow(name="train", log_prints=True)
def train(config_path: Path = Path("configs/train.yaml"), overrides: dict | None = None) -> dict[str, Any]:
    """Train from the YAML config (+ dotted overrides); returns version, promotion and the metrics."""
    settings = get_settings()
    config = TrainConfig.load(config_path, overrides)
    with data_lock(settings, "train"):  # the data version is read under it too: no prepare moves it meanwhile
        data_version = versioning.data_version(settings)
        params = training.flat_params(config)
        with registry.start_run("train", data_version=data_version, tags={"flow": "train"}, settings=settings):
            net, pre = pretrain_task(config, settings)
            mlflow.log_metric("pretrain_mnist_test_accuracy", pre.mnist_test_accuracy)
            mlflow.set_tag("pretrain_cached", str(pre.cached))
            net, report = finetune_task(config, settings, net, registry.logger_factory(settings))
            reports = evaluate_task(report, settings)
            reg = register_task(net, report, data_version, params)
    print(f"test: {report.summary()}")
    print(f"model version {reg.version}: {reg.reason}")
    return {
        "model_version": reg.version,
        "run_id": reg.run_id,
        "promoted": reg.promoted,
        "reason": reg.reason,
        "data_version": data_version,
        "pretrain": {"mnist_test_accuracy": pre.mnist_test_accuracy, "cached": pre.cached, "seconds": pre.seconds},
        "metrics": {k: round(float(v), 4) for k, v in report.metrics.items() if v == v},
        "reports": reports,
    }


if __name__ == "__main__":
    print(train())
