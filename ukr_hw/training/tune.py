"""Optuna over the fine-tune config: search space from YAML, a Lightning pruning callback, nested MLflow runs.

``configs/tune.yaml`` (:class:`~ukr_hw.training.config.TuneConfig`)::

    base: train.yaml                 # the training config the trials start from (relative to this file)
    overrides: {finetune.epochs: 12} # applied to every trial
    metric: val/score                # validation metric to maximise (never the frozen test split)
    repeats: 2                       # fine-tunes per trial (seeds seed, seed+1: other validation slices), mean
    sampler: {seed: 42}
    pruner: {n_startup_trials: 2, n_warmup_steps: 2}
    best_params_path: best_params.yaml
    space:
      finetune.lr: {type: float, low: 0.0005, high: 0.01, log: true}
      augment.rotation_deg: {type: float, low: 0, high: 15}
      finetune.batch_size: {type: categorical, choices: [32, 64, 128]}

Storage is ``settings.resolved_optuna_storage()`` (SQLite by default, PostgreSQL in the stack), studies are
loaded if they exist, so several workers can join one study. Each trial is a nested MLflow run.

Pruning is this module's :class:`OptunaPruning`: ``optuna-integration``'s ``PyTorchLightningPruningCallback`` does
the same for ``lightning.pytorch`` but is not a dependency of this project.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import yaml

from ukr_hw.model.lit import monitored_value
from ukr_hw.training.config import (
    ConfigError,
    SearchDimension,
    TrainConfig,
    TuneConfig,
    apply_overrides,
    flat_params,
)


class OptunaPruning(L.Callback):
    """Report ``monitor`` to the trial after every validation and raise ``optuna.TrialPruned`` when told to.

    ``optuna-integration``'s ``PyTorchLightningPruningCallback`` works with Lightning 2.6 too, but it would replace
    these ten lines with a dependency."""

    def __init__(self, trial: optuna.trial.Trial, monitor: str = "val/score") -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = monitored_value(trainer, self.monitor)
        if value is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: {self.monitor}={value:.4f}")


def load_tune_config(path: Path | str) -> TuneConfig:
    """``configs/tune.yaml``, validated; ``base_path`` and ``best_params_path`` resolved against its folder."""
    return TuneConfig.load(path)


def _dimension(spec: SearchDimension | Mapping[str, Any]) -> SearchDimension:
    return spec if isinstance(spec, SearchDimension) else SearchDimension.model_validate(dict(spec))


def suggest(trial: optuna.trial.Trial, space: Mapping[str, SearchDimension | Mapping[str, Any]]) -> dict[str, Any]:
    """Sample one value per dotted key from its distribution (float / int / categorical)."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        d = _dimension(spec)
        if d.type == "float":
            params[key] = trial.suggest_float(key, float(d.low), float(d.high), log=d.log)
        elif d.type == "int":
            params[key] = trial.suggest_int(key, int(d.low), int(d.high), log=d.log)
        else:
            params[key] = trial.suggest_categorical(key, list(d.choices or []))
    return params


def make_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    spec = dict(spec or {})
    kind = spec.pop("type", "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(**spec)
    if kind == "threshold":
        return optuna.pruners.ThresholdPruner(**spec)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner type {kind!r} unknown: use median, threshold or none")


def create_study(study_name: str, storage: str, tune_cfg: TuneConfig) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(**tune_cfg.sampler)
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        sampler=sampler,
        pruner=make_pruner(tune_cfg.pruner),
        load_if_exists=True,
    )


def trial_config(tune_cfg: TuneConfig, params: Mapping[str, Any]) -> TrainConfig:
    """The full training config of one trial: base file ← tune overrides ← sampled params."""
    return load_config_from(TrainConfig.load(tune_cfg.base_path, tune_cfg.overrides), params)


def configured_params(
    config: TrainConfig | Mapping[str, Any], space: Mapping[str, SearchDimension | Mapping[str, Any]]
) -> dict[str, Any]:
    """The training config's own values of the search space's keys, where they lie inside their distributions.

    A fresh study runs them first (``enqueue_trial``), so it shows the score its best trial has to beat. Keys the
    config leaves unset (``None``) or sets outside the space are left out: that trial samples them.
    """
    values = flat_params(config)  # the config's dotted keys, as the space names them
    params: dict[str, Any] = {}
    for key, spec in space.items():
        d = _dimension(spec)
        value = values.get(key)
        if value is None:
            continue
        if d.type == "categorical":
            if value in list(d.choices or []):
                params[key] = value
        elif float(d.low) <= float(value) <= float(d.high):
            params[key] = int(value) if d.type == "int" else float(value)
    return params


def trial_seeds(config: TrainConfig | Mapping[str, Any], tune_cfg: TuneConfig | Mapping[str, Any]) -> list[int]:
    """The fine-tune seeds of one trial: ``seed``, ``seed + 1``, … (``repeats`` of them, 1 by default).

    Each seed carves its own validation slice, so a trial scored on their mean is judged on more of the data and
    less on one slice's luck: a 60-trial study on one slice found a recipe 3.8 points better there that gained
    nothing beyond seed noise on the frozen split with a second pretrained body (docs/experiments.md).
    """
    repeats = int(tune_cfg.repeats if isinstance(tune_cfg, TuneConfig) else tune_cfg.get("repeats", 1))
    if repeats < 1:
        raise ConfigError(f"tune config: repeats must be 1 or more, got {repeats}")
    seed = config.seed if isinstance(config, TrainConfig) else int(config["seed"])
    return [seed + r for r in range(repeats)]


def load_config_from(config: TrainConfig | Mapping[str, Any], params: Mapping[str, Any]) -> TrainConfig:
    """``config`` with the dotted ``params`` set, validated."""
    return TrainConfig.coerce(config).override(params)


def write_best_params(params: Mapping[str, Any], path: Path | str, value: float | None = None) -> Path:
    """Write dotted best params as nested YAML that ``configs/train.yaml`` merges (``merge: [best_params.yaml]``)."""
    nested = apply_overrides({}, dict(params))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `ukr-hw tune` (best trial"
    header += f", validation score {value:.4f})\n" if value is not None and math.isfinite(value) else ")\n"
    path.write_text(header + yaml.safe_dump(nested, sort_keys=True), encoding="utf-8")
    return path
