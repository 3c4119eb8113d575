"""Optuna tuning on tiny data: trials are nested MLflow runs, a bad trial is pruned, best params are written."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml

from tests.integration.test_training_flows import tiny_project  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def test_tune_nested_runs_pruning_and_best_params(tiny_project, tmp_path):  # noqa: F811
    import mlflow
    from mlflow import MlflowClient

    from flows.tune import tune
    from ukr_hw.training.tune import create_study, load_tune_config

    cfg_path = tiny_project / "tune.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "configs" / "tiny.yaml"),
                "overrides": {"finetune.epochs": 4, "finetune.epoch_size": 512, "finetune.patience": 0},
                "metric": "val/score",
                "repeats": 2,  # each trial fine-tunes with seeds 0 and 1 and scores their mean
                "sampler": {"seed": 0},
                # one finished trial is enough to compare against; prune from the first epoch on
                "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                "best_params_path": "best.yaml",
                "space": {"finetune.lr": {"type": "float", "low": 1e-7, "high": 0.05, "log": True}},
            }
        )
    )
    storage = f"sqlite:///{tiny_project / 'optuna.db'}"
    tiny_lr = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["finetune"]["lr"]
    # deterministic trials: a good learning rate, a hopeless one (must be pruned), a good one again
    study = create_study("tiny-study", storage, load_tune_config(cfg_path))
    for lr in (0.03, 1e-7, 0.02):
        study.enqueue_trial({"finetune.lr": lr})

    summary = tune(n_trials=3, study_name="tiny-study", config_path=cfg_path)
    assert summary["trials"] == 3 and summary["pruned"] >= 1 and summary["complete"] >= 1

    loaded = optuna.load_study(study_name="tiny-study", storage=storage)
    states = {t.params["finetune.lr"]: t.state for t in loaded.trials}
    assert states[1e-7] == optuna.trial.TrialState.PRUNED

    best = yaml.safe_load((tiny_project / "best.yaml").read_text())
    assert best["finetune"]["lr"] == loaded.best_params["finetune.lr"]

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("ukr-hw")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "tune-tiny-study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 3
    assert sorted(r.data.tags["optuna_state"] for r in children).count("PRUNED") >= 1
    assert all("finetune.lr" in r.data.params for r in children)
    # a completed trial is the mean of its two fine-tunes, each logged, with its own curve
    complete = [r for r in children if r.data.tags["optuna_state"] == "COMPLETE"]
    assert complete
    for run in complete:
        m = run.data.metrics
        assert abs(m["val_score"] - (m["val_score_seed0"] + m["val_score_seed1"]) / 2) < 1e-9
        assert {"seed0-val/score", "seed1-val/score"} <= set(m)
        trial = next(t for t in loaded.trials if t.number == int(run.data.tags["optuna_trial"]))
        assert abs(trial.value - m["val_score"]) < 1e-9

    # a fresh study's first trial is the configured recipe, and the summary gives its score
    fresh = tune(n_trials=1, study_name="tiny-fresh", config_path=cfg_path)
    first = optuna.load_study(study_name="tiny-fresh", storage=storage).trials[0]
    assert first.user_attrs["configured"] and first.params["finetune.lr"] == tiny_lr
    assert first.state == optuna.trial.TrialState.COMPLETE  # the reference is never pruned
    assert fresh["configured_value"] == first.value == fresh["best_value"]


def test_trial_seeds_follow_the_config_seed_and_refuse_no_repeats():
    import pytest

    from ukr_hw.training import ConfigError
    from ukr_hw.training.tune import trial_seeds

    assert trial_seeds({"seed": 42}, {}) == [42]
    assert trial_seeds({"seed": 42}, {"repeats": 3}) == [42, 43, 44]
    with pytest.raises(ConfigError, match="repeats"):
        trial_seeds({"seed": 42}, {"repeats": 0})


def test_configured_params_are_the_configs_values_inside_the_space():
    from ukr_hw.training.tune import configured_params

    space = {
        "finetune.lr": {"type": "float", "low": 0.001, "high": 0.01},
        "finetune.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "finetune.batch_size": {"type": "categorical", "choices": [32, 64]},
        "finetune.epochs": {"type": "int", "low": 5, "high": 10},
        "augment.shift": {"type": "float", "low": 0.02, "high": 0.14},
    }
    config = {
        "finetune": {"lr": 0.003, "dropout": None, "batch_size": 64, "epochs": 20},
        "augment": {"shift": 0.08},
    }
    # dropout unset and epochs outside the space: the first trial samples those
    assert configured_params(config, space) == {"finetune.lr": 0.003, "finetune.batch_size": 64, "augment.shift": 0.08}
