"""MLflow tracking and the registry: what a run holds, the promotion rule, loading the logged model."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.fixtures.data import temp_env
from tests.fixtures.models import EPOCHS, NET
from ukr_hw import stack, tracking
from ukr_hw.inference import Predictor


@pytest.fixture(autouse=True)
def mlflow_at_champion_store(champion_model) -> None:
    """This module's bare ``mlflow`` calls (``models:/`` URIs) go to the fixture's store, whatever store the test
    before it left MLflow pointing at (the conftest's ``mlflow_uris_restored`` puts the old URIs back after)."""
    mlflow.set_tracking_uri(champion_model.tracking_uri)
    mlflow.set_registry_uri(champion_model.tracking_uri)


@pytest.fixture()
def client(champion_model) -> MlflowClient:
    return MlflowClient(tracking_uri=champion_model.tracking_uri, registry_uri=champion_model.tracking_uri)


def test_run_holds_params_metrics_tags_figures_table_and_model(champion_model, client):
    run = client.get_run(champion_model.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data_version"] == champion_model.data_version
    assert run.data.params["epochs"] == str(EPOCHS) and run.data.params["width"] == str(NET["width"])
    assert run.data.tags["data_version"] == champion_model.data_version
    assert len(run.data.tags["git_commit"].split("+")[0]) == 40
    # per-epoch metrics came through the Lightning logger into this same run
    history = client.get_metric_history(champion_model.run_id, "val/symbol_acc")  # one point per epoch
    assert len(history) == EPOCHS and [m.step for m in history] == sorted(m.step for m in history)
    assert history[-1].value > history[0].value
    assert client.get_metric_history(champion_model.run_id, "train/loss")  # per-step training loss too
    # the frozen-test evaluation
    assert 0.3 < run.data.metrics["test_symbol_accuracy"] <= 1.0
    assert 0.0 <= run.data.metrics["test_case_accuracy"] <= 1.0
    files = {f.path for f in client.list_artifacts(champion_model.run_id, "eval/test")}
    for name in ("confusion_symbol.png", "confusion_case.png", "misclassified.png", "per_class.json"):
        assert f"eval/test/{name}" in files
    png = client.download_artifacts(champion_model.run_id, "eval/test/confusion_symbol.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads(Path(client.download_artifacts(champion_model.run_id, "eval/test/per_class.json")).read_text())
    assert "accuracy" in table["columns"] and len(table["data"]) >= 40
    # the model: signature with named tensors, an input example, registered and tagged with its numbers
    info = mlflow.models.get_model_info(f"models:/{champion_model.model_name}/{champion_model.versions[0]}")
    inputs = {s.name: s.shape for s in info.signature.inputs.inputs}
    outputs = {s.name: s.shape for s in info.signature.outputs.inputs}
    assert inputs == {"image": (-1, 28, 28), "ink": (-1, 2)}
    assert outputs == {"symbol_probs": (-1, 43), "case_prob": (-1,)}
    assert info.saved_input_example_info is not None
    mv = client.get_model_version(champion_model.model_name, champion_model.versions[0])
    assert mv.run_id == champion_model.run_id
    assert mv.tags["promotion"].startswith("promoted: first model")
    assert float(mv.tags["test_symbol_accuracy"]) == pytest.approx(run.data.metrics["test_symbol_accuracy"])


def test_pyfunc_load_gives_the_predictors_probabilities(champion_model):
    model = mlflow.pyfunc.load_model(f"models:/{champion_model.model_name}/{champion_model.versions[0]}")
    test = champion_model.test.subset(slice(0, 64))
    x, ink = test.x.astype(np.float32) / 255.0, test.ink
    out = model.predict({"image": x, "ink": ink})
    predictor = Predictor.from_uri(f"models:/{champion_model.model_name}/{champion_model.versions[0]}")
    probs, case = predictor.predict_arrays(x, ink)
    np.testing.assert_allclose(out["symbol_probs"], probs, atol=1e-6)
    np.testing.assert_allclose(out["case_prob"], case, atol=1e-6)
    inner = model.unwrap_python_model().predictor  # what the BentoML service calls directly
    np.testing.assert_allclose(inner.predict_arrays(x, ink)[0], probs, atol=1e-6)
    # and it really is the trained champion: its accuracy matches the run's test metric
    full = Predictor.from_uri(champion_model.model_uri)
    acc = float(
        (
            full.predict_arrays(champion_model.test.x, champion_model.test.ink)[0].argmax(1) == champion_model.test.y
        ).mean()
    )
    run = MlflowClient(champion_model.tracking_uri).get_run(champion_model.run_id)
    assert acc == pytest.approx(run.data.metrics["test_symbol_accuracy"], abs=1e-9)


def test_worse_model_is_registered_not_promoted_and_better_one_is(champion_model, client):
    from ukr_hw.model.evaluate import evaluate
    from ukr_hw.model.network import build_network

    before = tracking.champion_version()
    assert before == champion_model.version
    champ_metrics = tracking.get_version_metrics(before)
    worse = build_network(NET).eval()  # untrained: its real test accuracy is near chance
    report = evaluate(worse, champion_model.test)
    assert report.metrics["symbol_accuracy"] < champ_metrics["symbol_accuracy"]
    with tracking.start_run("worse", data_version=champion_model.data_version):
        reg = tracking.log_model_and_register(worse, report=report, data_version="dv-worse", params={"untrained": 1})
    assert not reg.promoted
    assert tracking.champion_version() == before
    registered = client.get_model_version(champion_model.model_name, reg.version)
    tag = registered.tags["promotion"]
    expected = tracking.decide_promotion(tracking.get_version_metrics(reg.version), champ_metrics, tolerance=0.01)
    assert tag.startswith("rejected: symbol_accuracy ") and expected[1] in tag  # the gate's own words, per population
    # every registered model names its data's sources and licences (CoMNIST: CC BY-SA 4.0, attribution)
    assert "CoMNIST" in registered.description and "CC BY-SA 4.0" in registered.description
    assert tracking.get_version_metrics(reg.version)["symbol_accuracy"] == pytest.approx(
        report.metrics["symbol_accuracy"]
    )
    # the champion's own weights trained one epoch more, judged by the rule (not forced)
    new = champion_model.register_another(epochs=1, promote=None)
    new_metrics = tracking.get_version_metrics(new)
    settings = tracking.get_settings()
    should, _ = tracking.decide_promotion(
        new_metrics,
        champ_metrics,
        settings.promotion_case_tolerance,
        population_tolerance=settings.promotion_population_tolerance,
    )
    assert (tracking.champion_version() == new) == should
    tag = client.get_model_version(champion_model.model_name, new).tags["promotion"]
    assert tag.startswith("promoted: " if should else "rejected: ")
    # a copy of the champion is never worse: promoted
    same = champion_model.register_another(epochs=0, promote=None)
    assert tracking.champion_version() == same == champion_model.version
    assert Predictor.from_uri().model_version == same


@pytest.mark.parametrize(
    ("new", "champ", "promote", "words"),
    [
        ({"symbol_accuracy": 0.9, "case_accuracy": 0.8}, None, True, "first model"),
        ({"symbol_accuracy": 0.9, "case_accuracy": 0.795}, {"symbol_accuracy": 0.9, "case_accuracy": 0.8}, True, ">="),
        (
            {"symbol_accuracy": 0.95, "case_accuracy": 0.7},
            {"symbol_accuracy": 0.9, "case_accuracy": 0.8},
            False,
            "case_accuracy 0.7000 < champion 0.8000",
        ),
        (
            {"symbol_accuracy": 0.89, "case_accuracy": 0.9},
            {"symbol_accuracy": 0.9, "case_accuracy": 0.8},
            False,
            "symbol_accuracy 0.8900 < champion 0.9000",
        ),
    ],
)
def test_promotion_rule(new, champ, promote, words):
    ok, why = tracking.decide_promotion(new, champ, tolerance=0.01)
    assert ok is promote and words in why


def test_symbol_rejection_says_how_many_glyphs() -> None:
    new, champ = {"symbol_accuracy": 0.8967, "case_accuracy": 0.924}, {"symbol_accuracy": 0.9004, "case_accuracy": 0.9}
    ok, why = tracking.decide_promotion(new, champ, tolerance=0.01, n=271)
    assert not ok and why == "symbol_accuracy 0.8967 < champion 0.9004 (a gap of 1 of the 271 frozen-test glyphs)"


def test_models_lists_versions_and_promote_by_hand_overrides_the_gate(champion_model, client, capsys):
    """`ukr-hw models` shows each version's frozen accuracy and verdict; `ukr-hw promote` moves the champion to a
    version the gate rejected, keeps the operator's reason and the gate's verdict in its tag, and refuses a missing
    version or an empty reason."""
    from ukr_hw.cli import main
    from ukr_hw.model.evaluate import evaluate
    from ukr_hw.model.network import build_network

    before = tracking.champion_version()
    worse = build_network(NET).eval()
    with tracking.start_run("worse-for-hand", data_version=champion_model.data_version):
        reg = tracking.log_model_and_register(
            worse, report=evaluate(worse, champion_model.test), data_version="dv-hand", params={}
        )
    assert not reg.promoted
    try:
        capsys.readouterr()
        assert main(["models"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["version"] for r in rows] == sorted((r["version"] for r in rows), key=int, reverse=True)
        listed = {r["version"]: r for r in rows}
        assert listed[before]["champion"] and not listed[reg.version]["champion"]
        assert listed[reg.version]["promotion"].startswith("rejected: ") and "symbol_accuracy" in listed[reg.version]

        with temp_env(UKR_HW_API_URL=f"http://127.0.0.1:{stack.free_port()}"):  # nobody listens
            assert main(["promote", reg.version, "--reason", "learnt the users' «т»"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["champion"] == reg.version and out["previous"] == before
        assert out["api"]["reloaded"] is False  # no API here: a warning, the alias has moved anyway
        assert tracking.champion_version() == reg.version
        tag = client.get_model_version(champion_model.model_name, reg.version).tags["promotion"]
        assert tag.startswith("promoted by hand: learnt the users' «т» (champion was v") and "rejected: " in tag

        assert main(["promote", "999", "--reason", "x"]) == 2
        assert "has no version '999'" in capsys.readouterr().err
        assert main(["promote", before, "--reason", "  "]) == 2
        assert "say why" in capsys.readouterr().err
        assert tracking.champion_version() == reg.version  # refused: nothing moved
    finally:
        tracking.set_champion(before)


def test_gate_weighs_each_population() -> None:
    """Per population of writers: the mean symbol accuracy may not drop, no population may lose more than the
    tolerance (so a big CoMNIST gain cannot hide a Rukopys loss), and each population's case is held as before."""
    champ = {
        "rukopys_n": 171.0,
        "rukopys_symbol_accuracy": 0.90,
        "rukopys_case_accuracy": 0.94,
        "comnist_n": 1488.0,
        "comnist_symbol_accuracy": 0.80,
        "symbol_accuracy": 0.81,
        "case_accuracy": 0.94,
    }
    better = {**champ, "comnist_symbol_accuracy": 0.92, "symbol_accuracy": 0.915}
    ok, why = tracking.decide_promotion(better, champ, tolerance=0.01)
    assert ok and why.startswith("symbol_accuracy 0.9100 >= champion 0.8500 (mean over populations;")
    assert "comnist 0.9200 vs 0.8000" in why and "rukopys 0.9000 vs 0.9000 (case 0.9400 vs 0.9400)" in why
    hides_a_loss = {**better, "rukopys_symbol_accuracy": 0.88}
    ok, why = tracking.decide_promotion(hides_a_loss, champ, tolerance=0.01)
    assert not ok and "rukopys symbol_accuracy 0.8800 < champion 0.9000 - tolerance 0.01" in why
    case_loss = {**better, "rukopys_case_accuracy": 0.92}
    ok, why = tracking.decide_promotion(case_loss, champ, tolerance=0.01)
    assert not ok and "rukopys case_accuracy 0.9200 < champion 0.9400 - tolerance 0.01" in why
    # a champion scored before CoMNIST joined the split: only the populations both were scored on count
    old = {k: v for k, v in champ.items() if not k.startswith("comnist")}
    ok, why = tracking.decide_promotion({**better, "comnist_symbol_accuracy": 0.1}, old, tolerance=0.01)
    assert ok and "comnist" not in why
    # no population metrics at all: the whole-split rule as before
    ok, why = tracking.decide_promotion({"symbol_accuracy": 0.8}, {"symbol_accuracy": 0.9}, tolerance=0.01)
    assert not ok and why == "symbol_accuracy 0.8000 < champion 0.9000"
