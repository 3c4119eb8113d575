"""The train flow end to end on tiny data: a real Prefect flow, a real MLflow (SQLite) run, registration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_data import write_tiny_processed

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture
def tiny_project(tmp_path, monkeypatch) -> Path:
    write_tiny_processed(tmp_path / "data" / "processed", n_per_class=6, mnist_per_class=20)
    monkeypatch.setenv("UKR_HW_ROOT", str(tmp_path))
    monkeypatch.setenv("UKR_HW_TORCH_THREADS", "1")
    monkeypatch.setenv("UKR_HW_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("UKR_HW_MLFLOW_ARTIFACT_ROOT", str(tmp_path / "mlartifacts"))
    monkeypatch.setenv("UKR_HW_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    return tmp_path


def test_train_flow_logs_run_registers_and_caches_pretrain(tiny_project):
    import mlflow
    from mlflow import MlflowClient

    from flows.train import train

    first = train(config_path=TINY, overrides={"finetune.epochs": "2"})
    assert first["model_version"] == "1" and first["promoted"] is True
    assert first["pretrain"]["cached"] is False
    assert 0.0 <= first["metrics"]["symbol_accuracy"] <= 1.0 and "case_accuracy" in first["metrics"]

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.data.params["finetune.epochs"] == "2" and run.data.params["net.width"] == "4"
    assert "test_symbol_accuracy" in run.data.metrics and "pretrain_mnist_test_accuracy" in run.data.metrics
    assert "val/score" in run.data.metrics  # per-epoch fine-tune metrics from the Lightning logger
    artifacts = {a.path for a in client.list_artifacts(first["run_id"], "eval/test")}
    assert {"eval/test/confusion_symbol.png", "eval/test/misclassified.png"} <= artifacts
    assert str(client.get_model_version_by_alias("ukr-hw", "champion").version) == "1"

    reports = tiny_project / "data" / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["symbol_accuracy"] == pytest.approx(first["metrics"]["symbol_accuracy"], abs=1e-4)
    assert (reports / "per_class.csv").exists() and (reports / "confusion.csv").exists()

    second = train(config_path=TINY, overrides={"finetune.epochs": "2"})
    assert second["pretrain"]["cached"] is True  # same MNIST + pretrain config: no retraining
    assert second["model_version"] == "2"
    # same seed, same data, same config: same result, so the promotion rule (>=) promotes it
    assert second["metrics"]["symbol_accuracy"] == pytest.approx(first["metrics"]["symbol_accuracy"])
    assert second["promoted"] is True


def test_train_flow_fine_tunes_logs_and_registers_an_ensemble(tiny_project):
    import mlflow
    from mlflow import MlflowClient

    from flows.train import train
    from ukr_hw.data.arrays import load_samples
    from ukr_hw.data.split import TEST_FILE
    from ukr_hw.inference import Predictor
    from ukr_hw.model.network import EnsembleNet

    overrides = {
        "finetune.epochs": "1",
        "finetune.members": "2",
        "finetune.case_threshold": "0.6",
        # re-fitted on the members' held-out letters (here the tiny data's "rukopys" ones, in retraining feedback)
        "finetune.case_threshold_fit.sources": "[rukopys]",
        "finetune.case_threshold_fit.min_letters": "1",
        "finetune.case_threshold_fit.min_gain": "0",
        "finetune.knn_weight": "0.2",
        "finetune.knn_case_weight": "0.3",
    }
    out = train(config_path=TINY, overrides=overrides)
    assert out["promoted"] is True
    m = out["metrics"]
    assert {"member0_symbol_accuracy", "member1_symbol_accuracy", "member1_case_accuracy"} <= m.keys()

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow.db'}")
    run = MlflowClient().get_run(out["run_id"])
    # each member's per-epoch curve is logged apart (seeds 0 and 1), next to the ensemble's test figures
    assert {"member0-val/score", "member1-val/score", "test_member1_symbol_accuracy"} <= run.data.metrics.keys()

    predictor = Predictor.from_uri()  # the champion, rebuilt from config.json + state_dict: both members
    assert isinstance(predictor.net, EnsembleNet) and len(predictor.net.members) == 2
    # each member remembers its own training glyphs (its validation slice differs), logged in its state_dict
    memories = [len(net.knn_labels) for net in predictor.net.members]
    assert all(n > 0 for n in memories) and {net.config.knn_weight for net in predictor.net.members} == {0.2}
    assert m["memory_glyphs"] == sum(memories) / 2
    assert all(len(net.knn_case) == len(net.knn_ink) == len(net.knn_labels) for net in predictor.net.members)
    test = load_samples(tiny_project / "data" / "processed" / TEST_FILE)
    probs, case = predictor.predict_arrays(test.x, test.ink)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert float((probs.argmax(1) == test.y).mean()) == pytest.approx(m["symbol_accuracy"], abs=1e-4)
    # the case operating point was set after training, logged with the model and applied by the loaded one
    assert m["case_threshold_fit_letters"] > 0
    assert m["case_threshold_fit_accuracy"] >= m["case_threshold_fit_accuracy_configured"]
    gained = m["case_threshold_fit_accuracy"] > m["case_threshold_fit_accuracy_configured"]
    assert (m["case_threshold"] != 0.6) == gained  # moved from 0.6 only for a better accuracy on those letters
    assert run.data.metrics["test_case_threshold"] == pytest.approx(m["case_threshold"])
    assert [net.config.case_threshold for net in predictor.net.members] == [m["case_threshold"]] * 2
    letters = test.case >= 0
    case_acc = float(((case[letters] > 0.5).astype(int) == test.case[letters]).mean())
    assert case_acc == pytest.approx(m["case_accuracy"], abs=1e-4)


def test_train_flow_rejects_bad_override(tiny_project):
    from flows.train import train
    from ukr_hw.training import ConfigError

    with pytest.raises(ConfigError, match="unknown config key"):
        train(config_path=TINY, overrides={"finetune.epochz": "2"})
