"""Optuna over the fine-tune config: search space from YAML, a Lightning pruning callback, nested MLflow runs.

``configs/tune.yaml``::

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
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import yaml

from ukr_hw.model.lit import monitored_value
from ukr_hw.training import ConfigError, _read_yaml, apply_overrides, flat_params, load_config


class OptunaPruning(L.Callback):
    """Report ``monitor`` to the trial after every validation and raise ``optuna.TrialPruned`` when told to."""

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


def load_tune_config(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    cfg = _read_yaml(path)
    if not isinstance(cfg.get("space"), Mapping) or not cfg["space"]:
        raise ConfigError(f"{path}: needs a non-empty `space:` mapping of dotted config keys to distributions")
    base = cfg.get("base")
    cfg["base_path"] = str((path.parent / base) if base and not Path(base).is_absolute() else base) if base else None
    best = cfg.get("best_params_path", "best_params.yaml")
    cfg["best_params_path"] = str(best if Path(best).is_absolute() else path.parent / best)
    return cfg


def suggest(trial: optuna.trial.Trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sample one value per dotted key from its distribution (float / int / categorical)."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec.get("type", "float")
        if kind == "float":
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif kind == "int":
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        elif kind == "categorical":
            params[key] = trial.suggest_categorical(key, list(spec["choices"]))
        else:
            raise ConfigError(f"search space {key!r}: unknown type {kind!r} (use float, int or categorical)")
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


def create_study(study_name: str, storage: str, tune_cfg: Mapping[str, Any]) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(**dict(tune_cfg.get("sampler") or {}))
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        sampler=sampler,
        pruner=make_pruner(tune_cfg.get("pruner")),
        load_if_exists=True,
    )


def trial_config(tune_cfg: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The full training config of one trial: base file ← tune overrides ← sampled params."""
    base = load_config(tune_cfg.get("base_path"), tune_cfg.get("overrides") or {})
    return load_config_from(base, params)


def configured_params(config: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The training config's own values of the search space's keys, where they lie inside their distributions.

    A fresh study runs them first (``enqueue_trial``), so it shows the score its best trial has to beat. Keys the
    config leaves unset (``None``) or sets outside the space are left out: that trial samples them.
    """
    values = flat_params(config)  # the config's dotted keys, as the space names them
    params: dict[str, Any] = {}
    for key, spec in space.items():
        value = values.get(key)
        if value is None:
            continue
        if spec.get("type", "float") == "categorical":
            if value in list(spec["choices"]):
                params[key] = value
        elif float(spec["low"]) <= float(value) <= float(spec["high"]):
            params[key] = int(value) if spec.get("type") == "int" else float(value)
    return params


def trial_seeds(config: Mapping[str, Any], tune_cfg: Mapping[str, Any]) -> list[int]:
    """The fine-tune seeds of one trial: ``seed``, ``seed + 1``, … (``repeats`` of them, 1 by default).

    Each seed carves its own validation slice, so a trial scored on their mean is judged on more of the data and
    less on one slice's luck: a 60-trial study on one slice found a recipe 3.8 points better there that gained
    nothing beyond seed noise on the frozen split with a second pretrained body (docs/experiments.md).
    """
    repeats = int(tune_cfg.get("repeats", 1))
    if repeats < 1:
        raise ConfigError(f"tune config: repeats must be 1 or more, got {repeats}")
    return [int(config["seed"]) + r for r in range(repeats)]


def load_config_from(config: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    return apply_overrides(copy.deepcopy(dict(config)), params)


def write_best_params(params: Mapping[str, Any], path: Path | str, value: float | None = None) -> Path:
    """Write dotted best params as nested YAML that ``configs/train.yaml`` merges (``merge: [best_params.yaml]``)."""
    nested = apply_overrides({}, {k: v for k, v in params.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `ukr-hw tune` (best trial"
    header += f", validation score {value:.4f})\n" if value is not None and math.isfinite(value) else ")\n"
    path.write_text(header + yaml.safe_dump(nested, sort_keys=True), encoding="utf-8")
    return path
