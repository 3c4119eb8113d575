"""The logged MLflow model is portable: ``mlflow.pyfunc.load_model("models:/ukr-hw@champion")`` works in a fresh
virtualenv that has only the model's own requirements (no ukr_hw, no pydantic-settings, prefect or bentoml), and
predicts what the repository's Predictor does.

The fresh environment is made with uv from the model's ``requirements.txt``; torch comes from the local wheel in
``/opt/wheels`` (``--find-links``), never from an index (PyPI's torch pulls gigabytes of CUDA).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WHEELS = Path(os.environ.get("UKR_HW_TEST_WHEELS", "/opt/wheels"))
TORCH = "torch==2.13.0"
UV = shutil.which("uv")

pytestmark = [
    pytest.mark.skipif(UV is None, reason="uv is not installed: it makes the fresh virtualenv"),
    pytest.mark.skipif(
        not list(WHEELS.glob("torch-2.13.0*.whl")),
        reason=f"no torch 2.13.0 wheel in {WHEELS}: torch must come from a local wheel, not from an index",
    ),
    pytest.mark.timeout(600),
]

#: run inside the fresh virtualenv: load by alias from the test's store, predict the example, show what is there
LOAD_AND_PREDICT = r"""
import importlib.util, json, sys
import numpy as np
import mlflow.pyfunc

uri, example, out = sys.argv[1:4]
missing = [m for m in ("ukr_hw", "pydantic_settings", "prefect", "bentoml", "lightning") if importlib.util.find_spec(m)]
data = np.load(example)
model = mlflow.pyfunc.load_model(uri)
pred = model.predict({"image": data["image"], "ink": data["ink"]})
np.savez(out, symbol_probs=pred["symbol_probs"], case_prob=pred["case_prob"])
import torch
print(json.dumps({"importable": missing, "torch": torch.__version__, "ukr_hw_loaded": "ukr_hw" in sys.modules}))
"""


def _tiny_net():
    """A small ensemble of two members with a memory of glyphs and a case threshold: every part the pyfunc has to
    rebuild (the members, the nearest-neighbour votes, the case shift)."""
    import torch

    from ukr_hw.model.network import build_network

    torch.manual_seed(0)
    config = {"width": 4, "hidden": 16, "knn_weight": 0.3, "knn_case_weight": 0.2, "case_threshold": 0.6}
    net = build_network({**config, "members": 2}).eval()
    rng = np.random.default_rng(0)
    for member in net.members:
        x = torch.from_numpy((rng.random((60, 1, 28, 28)) > 0.8).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 43, 60))
        case = torch.from_numpy(np.where(y.numpy() >= 10, rng.integers(0, 2, 60), -1))
        ink = torch.from_numpy(rng.random((60, 2)).astype(np.float32))
        member.remember(x, y, case, ink)
    return net


def _examples(n: int = 16) -> dict[str, np.ndarray]:
    from ukr_hw import registry

    rng = np.random.default_rng(1)
    base = registry.input_example(2)
    image = np.concatenate([base["image"], (rng.random((n - 2, 28, 28)) > 0.85).astype(np.float32)])
    ink = np.concatenate([base["ink"], rng.uniform(0.05, 0.9, (n - 2, 2)).astype(np.float32)])
    return {"image": image, "ink": ink}


def _uv(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([UV, *args], capture_output=True, text=True, timeout=timeout, env=env)  # type: ignore[list-item]


def test_champion_loads_and_predicts_in_a_fresh_virtualenv(tmp_path) -> None:
    import mlflow

    from ukr_hw import registry
    from ukr_hw.inference import Predictor

    # a registry of our own: SQLite + an artifact folder, the model registered and made champion
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("portable", str(tmp_path / "artifacts")))
    net = _tiny_net()
    with mlflow.start_run():
        info = registry.log_model(net)
    version = mlflow.register_model(info.model_uri, "ukr-hw").version
    client = mlflow.MlflowClient(store, store)
    client.set_registered_model_alias("ukr-hw", "champion", version)
    uri = "models:/ukr-hw@champion"

    # what the model says it needs: exact pins, nothing of this repository
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri))
    reqs = [r for r in requirements.read_text().split() if r]
    assert {r.split("==")[0] for r in reqs} == {"mlflow", "torch", "numpy"}, reqs
    assert all(re.fullmatch(r"[a-z]+==[0-9][^\s]*", r) for r in reqs), reqs
    assert TORCH in reqs
    local = Path(mlflow.artifacts.download_artifacts(f"{uri}", dst_path=str(tmp_path / "model")))
    assert sorted(p.name for p in (local / "code" / "ukr_hw_portable").glob("*.py")) == [
        "__init__.py",
        "labels.py",
        "network.py",
    ]
    packaged = (local / "code" / "ukr_hw_portable" / "network.py").read_text()
    assert "from .labels import NUM_CLASSES" in packaged
    assert not re.search(r"^\s*(from|import)\s+ukr_hw\b", packaged, re.M)

    # the fresh virtualenv: only the model's requirements, torch from the local wheel
    venv = tmp_path / "venv"
    made = _uv("venv", "--quiet", "--python", sys.executable, str(venv))
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    install = ["pip", "install", "--python", str(python), "--find-links", str(WHEELS), TORCH, "-r", str(requirements)]
    plan = _uv(*install, "--dry-run")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = plan.stdout + plan.stderr
    # never the index's torch: that one would download the CUDA stack
    assert "torch==2.13.0+cpu" in planned and "nvidia" not in planned.lower(), planned[-3000:]
    done = _uv(*install)
    assert done.returncode == 0, done.stderr[-3000:]

    examples = _examples()
    np.savez(tmp_path / "example.npz", **examples)
    script = tmp_path / "load.py"
    script.write_text(LOAD_AND_PREDICT)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_REGISTRY_URI": store,
        "TORCH_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [str(python), str(script), uri, str(tmp_path / "example.npz"), str(tmp_path / "out.npz")],
        cwd=tmp_path,  # not the repository: nothing of ukr_hw on the path
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"importable": [], "torch": "2.13.0+cpu", "ukr_hw_loaded": False}, seen

    # it predicts what the repository's own Predictor does with the same network
    out = np.load(tmp_path / "out.npz")
    probs, case = Predictor(net).predict_arrays(examples["image"], examples["ink"])
    np.testing.assert_allclose(out["symbol_probs"], probs, atol=1e-6)
    np.testing.assert_allclose(out["case_prob"], case, atol=1e-6)
    assert out["symbol_probs"].shape == (16, 43) and np.allclose(out["symbol_probs"].sum(1), 1.0, atol=1e-5)
