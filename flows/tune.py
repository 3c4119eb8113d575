"""The tune flow: an Optuna study over the fine-tune config, each trial a nested MLflow run under the study's run.

Thin: the search space, the pruning callback and the best-params file live in :mod:`ukr_hw.training.tune`;
training is :func:`ukr_hw.training.finetune` from the (cached) MNIST-pretrained body. Trials are scored on the
validation slice carved from the training data, never on the frozen test split: with ``repeats: N`` in the tune
config, the mean over N fine-tunes with seeds ``seed`` … ``seed + N - 1``, each with its own slice. The study holds
the data lock (:func:`ukr_hw.ops.locks.data_lock`): every trial reads the same ``data/processed``, and a prepare or
retrain waits for the study to end instead of changing the data under it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import optuna
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ukr_hw import registry, training
from ukr_hw.data import versioning
from ukr_hw.ops.locks import data_lock
from ukr_hw.settings import Settings, get_settings
from ukr_hw.training import PretrainResult, TrainConfig
from ukr_hw.training import tune as tuning


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain_task(config: TrainConfig, settings: Settings) -> tuple[Any, PretrainResult]:
    return training.pretrain(config, settings)


@task(name="optimize", cache_policy=NO_CACHE)
def optimize_task(study: optuna.Study, objective: Any, n_trials: int) -> None:
    study.optimize(objective, n_trials=n_trials, catch=())


@task(name="write-best-params", cache_policy=NO_CACHE)
def best_params_task(study: optuna.Study, path: str) -> str:
    return str(tuning.write_best_params(study.best_params, path, study.best_value))


@flow(name="tune", log_prints=True)
def tune(
    n_trials: int = 20, study_name: str = "ukr-hw-finetune", config_path: Path = Path("configs/tune.yaml")
) -> dict[str, Any]:
    settings = get_settings()
    tune_cfg = tuning.load_tune_config(config_path)
    base = tuning.trial_config(tune_cfg, {})
    metric = tune_cfg.metric
    seeds = tuning.trial_seeds(base, tune_cfg)  # checked before the pretraining, not at the first trial
    study = tuning.create_study(study_name, settings.resolved_optuna_storage(), tune_cfg)
    if not study.trials:  # a fresh study first scores the configured recipe: the figure the best trial must beat
        study.enqueue_trial(tuning.configured_params(base, tune_cfg.space), user_attrs={"configured": True})
    with (
        data_lock(settings, "tune"),  # entered first: the data version below is read under it
        registry.start_run(
            f"tune-{study_name}",
            data_version=versioning.data_version(settings),
            tags={"flow": "tune"},
            settings=settings,
        ),
    ):
        init, _ = pretrain_task(base, settings)

        def objective(trial: optuna.Trial) -> float:
            params = tuning.suggest(trial, tune_cfg.space)
            # a trial is one network at a time: pruning follows one training curve
            config = tuning.load_config_from(base, {**params, "finetune.members": 1})
            tags = {"optuna_study": study_name, "optuna_trial": trial.number}
            with registry.start_run(f"trial-{trial.number}", nested=True, tags=tags, settings=settings):
                mlflow.log_params(params)
                scores: list[float] = []
                make_logger = registry.logger_factory(settings)
                prunable = not trial.user_attrs.get("configured")
                for seed in seeds:  # each seed trains on its own validation slice
                    prefix = f"seed{seed}" if len(seeds) > 1 else ""  # several runs' curves apart: seed43-val/score
                    try:
                        _, report = training.finetune(
                            config.model_copy(update={"seed": seed}),
                            settings,
                            init=init,
                            # the first run's curve is what pruning compares across trials; the configured
                            # recipe is the reference and runs to the end
                            callbacks=[tuning.OptunaPruning(trial, metric)] if not scores and prunable else [],
                            make_logger=lambda _member, prefix=prefix: make_logger(prefix),
                        )
                    except optuna.TrialPruned:
                        mlflow.set_tag("optuna_state", "PRUNED")
                        raise
                    scores.append(float(report.metrics["val_score"]))
                    mlflow.log_metric(f"val_score_seed{seed}", scores[-1])
                mlflow.set_tag("optuna_state", "COMPLETE")
                mlflow.log_metrics({"val_score": sum(scores) / len(scores)})
                return sum(scores) / len(scores)

        optimize_task(study, objective, n_trials)
        states = [t.state.name for t in study.trials]
        summary: dict[str, Any] = {
            "study": study_name,
            "trials": len(states),
            "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
        }
        configured = [t for t in study.trials if t.user_attrs.get("configured") and t.state.name == "COMPLETE"]
        if configured:
            summary["configured_value"] = configured[0].value
        if summary["complete"]:
            summary["best_value"] = study.best_value
            summary["best_params"] = study.best_params
            summary["best_params_path"] = best_params_task(study, tune_cfg.best_params_path)
            mlflow.log_metric("best_val_score", study.best_value)
    print(f"study {study_name}: {summary}")
    return summary


if __name__ == "__main__":
    print(tune())
