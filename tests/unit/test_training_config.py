"""The training config model (ukr_hw.training.config): YAML and --set overrides validated, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ukr_hw.training import ConfigError, TrainConfig, TuneConfig, flat_params, load_config
from ukr_hw.training.tune import trial_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_an_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'finetune\.lrr'.*known keys here: \[.*'lr'"):
        TrainConfig.load(None, {"finetune.lrr": "0.1"})
    (tmp_path / "train.yaml").write_text("net:\n  widht: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'net\.widht'"):
        TrainConfig.load(tmp_path / "train.yaml")
    for key in ("augment.rotation", "pretrain.augment.rotation", "finetune.case_threshold_fit.minimum", "colour"):
        with pytest.raises(ConfigError, match=rf"unknown config key '{key}'"):
            TrainConfig.load(None, {key: "1"})


def test_a_wrong_type_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'finetune\.epochs'.*valid integer.*'many'"):
        TrainConfig.load(None, {"finetune.epochs": "many"})
    (tmp_path / "train.yaml").write_text("trainer:\n  progress: sometimes\n")
    with pytest.raises(ConfigError, match=r"'trainer\.progress'.*boolean"):
        TrainConfig.load(tmp_path / "train.yaml")
    with pytest.raises(ConfigError, match=r"'finetune\.case_threshold_fit\.sources'.*list"):
        TrainConfig.load(None, {"finetune.case_threshold_fit.sources": "feedback"})
    with pytest.raises(ConfigError, match="case_threshold must be a probability"):
        TrainConfig.load(None, {"finetune.case_threshold": "1.5"})
    with pytest.raises(ConfigError, match=r"'retrain\.epochs'.*valid integer"):
        TrainConfig.load(None, {"retrain.epochs": "many"})


def test_set_overrides_are_parsed_and_validated():
    cfg = TrainConfig.load(
        None, {"finetune.epochs": "3", "finetune.lr": "1e-3", "trainer.progress": "false", "augment.shift": "0.1"}
    )
    assert cfg.finetune.epochs == 3 and cfg.finetune.lr == 0.001 and cfg.trainer.progress is False
    assert cfg.augment.model_dump() == {"shift": 0.1}  # augment holds only what is set: AugmentConfig fills the rest
    assert cfg.finetune.case_threshold_fit.sources == ["feedback"]  # untouched sections keep their defaults
    # an int stays an int (MLflow params and the pretrain cache key read as written)
    assert type(TrainConfig.load(None, {"finetune.lr": "1"}).finetune.lr) is int
    # override() gives a validated copy
    again = cfg.override({"finetune.members": 1, "seed": 7})
    assert again.seed == 7 and cfg.seed == 42 and again.finetune.epochs == 3
    with pytest.raises(ConfigError, match=r"'seed'"):
        cfg.override({"seed": "abc"})


def test_partial_sections_and_the_dict_view():
    cfg = TrainConfig.load(None, {"retrain.lr": "1e-3", "retrain.case_threshold_fit.low": "0.2"})
    d = load_config(None, {"retrain.lr": "1e-3", "retrain.case_threshold_fit.low": "0.2"})
    assert d == cfg.to_dict() and d["retrain"] == {"lr": 0.001, "case_threshold_fit": {"low": 0.2}}
    assert d["pretrain"]["augment"]["rotation_deg"] == 8.0  # pretrain.augment: its defaults, the given keys over them
    assert (
        TrainConfig.load(None, {"pretrain.augment.noise_std": "0.1"}).pretrain.augment.model_dump()["shear_deg"] == 6.0
    )
    assert TrainConfig.coerce(d) == cfg and TrainConfig.coerce(cfg) is cfg
    params = flat_params(cfg)
    assert params["retrain.lr"] == 0.001 and params["finetune.case_threshold_fit.low"] == 0.3
    assert "augment.shift" not in params and params == flat_params(d)


def test_every_yaml_in_configs_loads():
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.name == "tune.yaml":
            tune = TuneConfig.load(path)
            assert tune.space and Path(tune.base_path).name == "train.yaml"
            assert Path(tune.best_params_path).parent == CONFIGS
            assert trial_config(tune, {}).finetune.epochs == tune.overrides["finetune.epochs"]
        else:
            cfg = TrainConfig.load(path)
            assert cfg.to_dict() == load_config(path)
    train = TrainConfig.load(CONFIGS / "train.yaml")
    assert train.finetune.members == 2 and train.retrain.model_dump() == {}


def test_tune_config_is_validated(tmp_path):
    bad = tmp_path / "tune.yaml"
    bad.write_text("space:\n  finetune.lr: {type: float, low: 0.1, high: 1}\nrepet: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'repet'"):
        TuneConfig.load(bad)
    bad.write_text("space:\n  finetune.lr: {type: gaussian}\n")
    with pytest.raises(ConfigError, match=r"space\.finetune\.lr\.type"):
        TuneConfig.load(bad)
    bad.write_text("space: {}\n")
    with pytest.raises(ConfigError, match="non-empty `space:`"):
        TuneConfig.load(bad)
