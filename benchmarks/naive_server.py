"""The naive baseline for ``benchmarks/serving.py``: what one writes first.

FastAPI + ``mlflow.pyfunc.load_model("models:/ukr-hw@champion")``, one image per request, no batching, one
process. Preprocessing is the same :func:`ukr_hw.preprocess.preprocess` (the comparison is about serving, not
about preprocessing). Run: ``uvicorn benchmarks.naive_server:app --port 8001`` from the repo root.
"""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI, File, HTTPException, UploadFile

from ukr_hw.inference import champion_uri, format_result, resolve_model_uri
from ukr_hw.preprocess import PreprocessError, preprocess
from ukr_hw.settings import get_settings

app = FastAPI(title="ukr-hw naive baseline")
_state: dict = {}


@app.on_event("startup")
def _load() -> None:
    import mlflow.pyfunc

    s = get_settings()
    mlflow.set_tracking_uri(s.resolved_tracking_uri())
    uri, version = resolve_model_uri(champion_uri(s), s)
    _state["model"], _state["version"] = mlflow.pyfunc.load_model(uri), version


@app.get("/readyz")
def readyz() -> dict:
    if "model" not in _state:
        raise HTTPException(503, "loading")
    return {"ok": True}


@app.post("/classify")
def classify(image: UploadFile = File(...)) -> dict:
    try:
        glyph = preprocess(image.file.read())
    except PreprocessError as exc:
        raise HTTPException(400, str(exc)) from exc
    out = _state["model"].predict({"image": glyph.pixels[None].astype(np.float32), "ink": glyph.features[None]})
    return format_result(out["symbol_probs"][0], float(out["case_prob"][0]), _state["version"])
