"""The Bento ships: `ukr-hw bento build` packs the champion, the code and its own runtime requirements; the Bento
is served by `bentoml serve <tag>` from the Bento store with nothing of the source tree (its own copy of the code
runs) and classifies a drawing; `ukr-hw serve` with the registry down starts on the newest model in the store and
says so (/readyz, /info, /metrics).

One Bento store (``BENTOML_HOME``) for the module: the build imports the session's champion into it, the other
tests serve from it. One server start per test.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.fixtures.data import temp_env
from tests.fixtures.servers import running_api, running_server
from ukr_hw import stack

REPO = Path(__file__).resolve().parents[2]
DEV_TOOLS = ("pytest", "ruff", "playwright", "schemathesis", "ipykernel", "nbclient", "jupyter-client", "mypy")


@dataclass
class Built:
    tag: str
    model: str
    path: Path  #: the Bento's folder in the store
    home: Path  #: BENTOML_HOME
    base: Path  #: its parent (``running_api``'s tmp dir)


@pytest.fixture(scope="module")
def built(champion_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """`ukr-hw bento build` (the real command line) into a fresh Bento store."""
    base = tmp_path_factory.mktemp("bento-build")
    home = base / "bentoml"
    with temp_env(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="true", UKR_HW_BENTO_MODEL=None):
        done = subprocess.run(
            [sys.executable, "-m", "ukr_hw.cli", "bento", "build"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["containerize"] == f"bentoml containerize {out['tag']}"
    assert f"bentoml serve {out['tag']}" in done.stderr  # says what to run next
    name, version = out["tag"].split(":")
    yield Built(out["tag"], out["model"], home / "bentos" / name / version, home, base)


def test_bento_packs_the_champion_the_code_and_runtime_requirements(built, champion_model):
    assert built.model == f"{champion_model.model_name}:mlflow-v{champion_model.version}"
    info = yaml.safe_load((built.path / "bento.yaml").read_text())
    packed = [m["tag"] for svc in info["services"] for m in svc.get("models") or []]
    assert packed == [built.model], packed
    assert info["labels"]["mlflow_version"] == champion_model.version
    src = built.path / "src"
    for module in (
        "ukr_hw/inference.py",
        "ukr_hw/model/network.py",
        "ukr_hw/preprocess.py",
        "services/bento/service.py",
    ):
        assert (src / module).is_file(), module
    assert not (src / "tests").exists() and not (src / "data").exists()
    assert not list(src.rglob("__pycache__"))

    reqs = (built.path / "env" / "python" / "requirements.txt").read_text()
    lines = [ln.strip() for ln in reqs.splitlines() if ln.strip() and not ln.startswith("#")]
    pins = {re.split(r"[=<>\[ ]", ln, maxsplit=1)[0].lower(): ln for ln in lines if not ln.startswith("-")}
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    lock = (REPO / "requirements.lock").read_text()
    for runtime in ("torch", "bentoml", "mlflow", "lightning", "numpy", "pillow", "scipy"):
        assert runtime in pins, runtime
        assert re.search(rf"^{re.escape(pins[runtime])}$", lock, re.M | re.I), f"{pins[runtime]} is not the lock's"
    assert pins["torch"].endswith("+cpu")  # CPU torch from the CPU index, never the CUDA build from PyPI
    for dev in DEV_TOOLS:
        assert dev not in pins, f"{dev} does not belong in the Bento"
    # nothing that points back at this machine: no editable install, no local wheel or file, no nested file
    assert not [ln for ln in lines if ln.startswith(("-e", "-r", "-c", "file:", "/", ".")) or "@ file" in ln], lines

    # `bentoml containerize` builds env/docker/Dockerfile: Python 3.11, uv told to take torch from the CPU index
    dockerfile = (built.path / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M), dockerfile[:400]
    install = dockerfile.index("pip install -r $BENTO_PATH/env/python/requirements.txt")
    assert -1 < dockerfile.find("ENV UV_INDEX_STRATEGY=") < install
    assert "--mount=type=secret" not in dockerfile  # builds with a plain `bentoml containerize`, no secrets to pass


def test_bento_serves_from_the_store_outside_the_source_tree(built, champion_model, mirror, tmp_path):
    """`bentoml serve <tag>` in an empty folder, no PYTHONPATH: the Bento's own code and model answer."""
    from ukr_hw.inference import Predictor

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "UKR_HW_BENTO_MODEL")}
    env.update(
        BENTOML_HOME=str(built.home),
        BENTOML_DO_NOT_TRACK="true",
        UKR_HW_SERVE_WORKERS="1",
        UKR_HW_ADMIN_TOKEN_FILE=str(tmp_path / "admin-token"),
    )
    log = tmp_path / "bento.log"
    cmd = [sys.executable, "-m", "bentoml", "serve", built.tag]
    with running_server(cmd, "bentoml serve", tmp_path, env, log) as srv:
        url = srv.url
        glyph = sorted((mirror / "rukopys" / "glyphs").glob("*.png"))[0]
        resp = httpx.post(f"{url}/classify", files={"image": (glyph.name, glyph.read_bytes())}, timeout=60)
        assert resp.status_code == 200, resp.text
        got = resp.json()
        expected = Predictor.from_uri(champion_model.model_uri).predict_sources([glyph.read_bytes()])[0]
        assert got["label"] == expected["label"] and got["model_version"] == champion_model.version
        assert [t["label"] for t in got["top"]] == [t["label"] for t in expected["top"]]
        np.testing.assert_allclose(
            [t["probability"] for t in got["top"]], [t["probability"] for t in expected["top"]], atol=2e-4
        )
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        assert ready["source"] == "bento" and ready["model_version"] == champion_model.version
    # the model service ran the Bento's copy of the code, not this checkout's (the venv has it installed editable)
    text = log.read_text()
    m = re.search(rf"serving {re.escape(built.model)} \(model version \S+; code in (\S+)\)", text)
    assert m, text[-3000:]
    assert Path(m.group(1)).resolve() == (built.path / "src").resolve()


def test_serve_starts_from_the_store_when_the_registry_is_unreachable(built, champion_model):
    """The registry down at start: `ukr-hw serve` serves the newest model in the store and says so."""
    dead = f"http://127.0.0.1:{stack.free_port()}"  # nothing listens there
    with running_api(
        built.base,
        mlflow_tracking_uri=dead,
        reload_interval_s="2",
        serve_workers="1",
        admin_token_file=str(built.base / "admin-token"),
    ) as srv:
        ready = httpx.get(f"{srv.url}/readyz", timeout=10).json()
        assert ready["ready"] is True and ready["model_version"] == champion_model.version
        assert ready["source"] == "store (registry unreachable)"
        assert ready["registry_reachable"] is False and ready["registry_status"] == "unreachable"
        assert dead in ready["last_check_error"], ready
        info = httpx.post(f"{srv.url}/info", json={}, timeout=10).json()
        assert info["source"] == "store (registry unreachable)" and info["registry_status"] == "unreachable"
        metrics = httpx.get(f"{srv.url}/metrics", timeout=10).text
        assert re.search(r"^ukr_hw_model_store_fallback(\{[^}]*\})? 1\.0$", metrics, re.M), metrics[-2000:]
        assert re.search(r"^ukr_hw_registry_reachable(\{[^}]*\})? 0\.0$", metrics, re.M)
        assert not re.search(r"^ukr_hw_registry_reachable(\{[^}]*\})? 1\.0$", metrics, re.M)
        glyph = np.full((64, 64), 255, np.uint8)
        glyph[10:54, 30:34] = 0  # a stroke: "1" or "і" — any answer, but an answer from the stored model
        buf = io.BytesIO()
        Image.fromarray(glyph).save(buf, format="PNG")
        resp = httpx.post(f"{srv.url}/classify", files={"image": ("one.png", buf.getvalue())}, timeout=60)
        assert resp.status_code == 200 and resp.json()["model_version"] == champion_model.version, resp.text
        log = srv.log.read_text()
    assert "warning: " in log and f"serving {built.model}, the newest model in the BentoML store" in log


def test_serve_without_registry_or_stored_model_says_what_to_do(champion_model, tmp_path):
    dead = f"http://127.0.0.1:{stack.free_port()}"
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "empty-store"),
        "BENTOML_DO_NOT_TRACK": "true",
        "UKR_HW_MLFLOW_TRACKING_URI": dead,
        "UKR_HW_ADMIN_TOKEN_FILE": str(tmp_path / "admin-token"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ukr_hw.cli", "serve", "--port", str(stack.free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "unreachable" in done.stderr and "holds no ukr-hw model" in done.stderr
    assert "start the registry" in done.stderr and str(tmp_path / "empty-store") in done.stderr
