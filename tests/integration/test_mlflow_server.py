"""Integration: tracking + registry + inference against a real `mlflow server` (PostgreSQL backend, artifacts
proxied to SeaweedFS S3). Clients hold no S3 credentials: artifacts go through the server."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.fixtures.models import NET, train_net
from ukr_hw import registry
from ukr_hw.inference import Predictor


def test_register_promote_and_predict_through_mlflow_server(
    champion_model, mlflow_server, s3_server, mirror, tmp_path, monkeypatch
):
    from ukr_hw.model.evaluate import evaluate
    from ukr_hw.model.network import build_network

    monkeypatch.setenv("UKR_HW_MLFLOW_TRACKING_URI", mlflow_server)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    assert registry.champion_version() is None  # a fresh registry

    net = copy.deepcopy(champion_model.net)
    with registry.start_run("server-finetune", data_version=champion_model.data_version) as run:
        net = train_net(net, champion_model.processed, epochs=1, make_logger=registry.logger_factory())
        report = evaluate(net, champion_model.test)
        reg = registry.log_model_and_register(
            net, report=report, data_version=champion_model.data_version, params={"epochs": 1, **NET}
        )
    assert reg.promoted and reg.version == "1" and reg.run_id == run.info.run_id
    assert registry.champion_version() == "1"

    client = MlflowClient(mlflow_server)
    r = client.get_run(reg.run_id)
    assert r.data.tags["data_version"] == champion_model.data_version and "git_commit" in r.data.tags
    assert len(client.get_metric_history(reg.run_id, "val/symbol_acc")) == 1  # one epoch, logged by Lightning
    assert r.data.metrics["test_symbol_accuracy"] == pytest.approx(report.metrics["symbol_accuracy"])
    assert {f.path for f in client.list_artifacts(reg.run_id, "eval/test")} >= {
        "eval/test/confusion_symbol.png",
        "eval/test/confusion_case.png",
        "eval/test/misclassified.png",
        "eval/test/per_class.json",
    }
    # the artifacts really are in S3 (read with the S3 server's own credentials)
    s3 = s3_server.client()
    keys = [
        obj["Key"]
        for b in s3.list_buckets()["Buckets"]
        if b["Name"].startswith("mlflow")
        for obj in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", [])
    ]
    assert any(k.endswith("state_dict.pt") for k in keys) and any(k.endswith("confusion_symbol.png") for k in keys)

    # a worse model is registered, not promoted, and says why
    worse = build_network(NET).eval()
    with registry.start_run("server-worse"):
        bad = registry.log_model_and_register(
            worse, report=evaluate(worse, champion_model.test), data_version="dv-x", params={"untrained": 1}
        )
    assert not bad.promoted and bad.version == "2" and registry.champion_version() == "1"
    assert client.get_model_version("ukr-hw", "2").tags["promotion"].startswith("rejected: symbol_accuracy")

    # load by alias: the Predictor and the pyfunc flavour agree with the net that was logged
    pred = Predictor.from_uri()
    assert pred.model_version == "1"
    test = champion_model.test.subset(slice(0, 40))
    x = test.x.astype(np.float32) / 255.0
    probs, case = pred.predict_arrays(x, test.ink)
    expected = Predictor(net, "1").predict_arrays(x, test.ink)
    np.testing.assert_allclose(probs, expected[0], atol=1e-6)
    out = mlflow.pyfunc.load_model("models:/ukr-hw@champion").predict({"image": x, "ink": test.ink})
    np.testing.assert_allclose(out["symbol_probs"], probs, atol=1e-6)
    np.testing.assert_allclose(out["case_prob"], case, atol=1e-6)

    # the console script, by alias, on real scans and a broken file
    files = sorted((mirror / "rukopys" / "glyphs").glob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = [str(files[0]), str(broken), *map(str, files[1:])]
    exe = shutil.which("ukr-hw", path=str(Path(sys.executable).parent)) or "ukr-hw"
    proc = subprocess.run([exe, "predict", *args], capture_output=True, text=True, timeout=180, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["path"] for line in lines] == args
    assert "error" in lines[1] and all(line["model_version"] == "1" for i, line in enumerate(lines) if i != 1)
