"""The model being served, and how it follows the registry's champion without a restart (hot reload).

The model service starts on a BentoML model: ``ukr-hw:<tag>`` from env ``UKR_HW_BENTO_MODEL`` (``ukr-hw serve``
sets it after importing the registry's champion), else the one the Bento packs, else ``ukr-hw:latest``
(:data:`BENTO_MODEL_TAG`). A :class:`ModelHolder` holds its :class:`~ukr_hw.inference.Predictor` and, from a
background thread every ``settings.reload_interval_s`` (and on ``POST /admin/reload``), asks the registry which
version carries the ``champion`` alias. A new version is loaded straight from MLflow completely before the reference
is swapped, so a batch in flight finishes on the model it started with. An unreachable registry, or one without a
champion, leaves the current model serving: the state is kept for ``/info`` and ``/readyz``, logged as a warning
and exported as metrics (:mod:`ukr_hw.serving.telemetry`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ukr_hw.inference import MODES  # light: no torch, no mlflow
from ukr_hw.serving import SETTINGS
from ukr_hw.serving.inputs import FEATURES, ROW
from ukr_hw.serving.telemetry import (
    MODEL_STORE_FALLBACK,
    MODEL_VERSION,
    REGISTRY_REACHABLE,
    RELOAD_FAILURES,
    RELOADS,
    log,
)


def packed_model_tag() -> str | None:
    """Run from a Bento (``<bento>/src/ukr_hw/serving/model.py``): the model its ``bento.yaml`` packs. Served from
    the Bento store, BentoML resolves models in the global store, where ``ukr-hw:latest`` may be a newer import."""
    import yaml

    manifest = Path(__file__).resolve().parents[3] / "bento.yaml"
    if not manifest.is_file():
        return None
    info = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    for svc in info.get("services") or []:
        for model in svc.get("models") or []:
            if str(model.get("tag", "")).startswith(f"{SETTINGS.model_name}:"):
                return str(model["tag"])
    return None


#: the BentoML model served at start: ``UKR_HW_BENTO_MODEL`` (``ukr-hw serve`` sets it), else the one this Bento packs
BENTO_MODEL_TAG = os.environ.get("UKR_HW_BENTO_MODEL") or packed_model_tag() or f"{SETTINGS.model_name}:latest"


def stored_version(stored: Any) -> str | None:
    """The registry version a model of the BentoML store was imported from (its label ``mlflow_version``)."""
    info = stored.info
    return info.labels.get("mlflow_version") or (info.metadata or {}).get("mlflow_version")


class ModelHolder:
    """The served Predictor (``predictor``, swapped whole on a reload), where it came from and the last registry
    check; ``predict`` runs a batch of input rows, ``check_registry`` follows the champion alias."""

    def __init__(self, stored: Any) -> None:
        """Load ``stored`` (a model of the BentoML store) and run one forward pass; :meth:`start_polling` then
        follows the registry."""
        import torch

        from ukr_hw.inference import Predictor

        torch.set_num_threads(SETTINGS.serve_torch_threads)
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self.registry_reachable: bool | None = None
        self.last_check_error: str | None = None
        self.registry_status: str | None = None
        self.predictor = Predictor.from_dir(stored.path, stored_version(stored))
        self.source = "bento"
        self.loaded_at = time.time()
        MODEL_VERSION.labels(version=str(self.predictor.model_version)).set(1)
        # `ukr-hw serve` found the registry down and chose the store's newest model: say so from the first request,
        # not only after the first poll (and with UKR_HW_RELOAD_INTERVAL_S=0 there is none)
        at_start = os.environ.get("UKR_HW_SERVE_REGISTRY_ERROR")
        if at_start:
            from services.bento.run import STORE_FALLBACK

            self.source, self.registry_reachable, self.registry_status = STORE_FALLBACK, False, "unreachable"
            self.last_check_error = (
                f"registry unreachable when the API started ({at_start}); serving {stored.tag}, the newest model "
                "in the BentoML store, until the registry answers"
            )
            REGISTRY_REACHABLE.set(0)
            log.warning("%s", self.last_check_error)
        MODEL_STORE_FALLBACK.set(1 if at_start else 0)
        code = Path(__file__).resolve().parents[2]  # the repo, or the Bento's src/ when served from a Bento
        log.info("serving %s (model version %s; code in %s)", stored.tag, self.predictor.model_version, code)
        # warm up: the first forward pass and the registry client's imports (mlflow) before the heap is frozen
        self.predictor.predict_arrays(np.zeros((1, 28, 28), np.float32), np.zeros((1, 2), np.float32))
        import mlflow.tracking  # noqa: F401

    def start_polling(self) -> None:
        """Check the registry every ``settings.reload_interval_s`` from a daemon thread (0: never)."""
        if SETTINGS.reload_interval_s > 0:
            threading.Thread(target=self._poll, name="ukr-hw-reload", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        self._stop.wait(min(1.0, SETTINGS.reload_interval_s))  # first check soon after start
        while not self._stop.is_set():
            self.check_registry()
            self._stop.wait(SETTINGS.reload_interval_s)

    def check_registry(self) -> dict[str, Any]:
        """Load the registry's champion if it is not the one being served; keep serving on any failure."""
        from ukr_hw.inference import Predictor, resolve_model_uri

        with self._reload_lock:
            previous = self.predictor.model_version
            try:
                uri, version = resolve_model_uri(None, SETTINGS)
                self.registry_reachable, self.last_check_error, self.registry_status = True, None, "ok"
                REGISTRY_REACHABLE.set(1)
                if version == previous and self.source != "registry":  # the store's model IS the champion
                    self.source = "bento"
                    MODEL_STORE_FALLBACK.set(0)
            except Exception as exc:
                from ukr_hw.inference import ModelNotFoundError

                no_champion = isinstance(exc, ModelNotFoundError)
                self.registry_reachable, self.last_check_error = no_champion, str(exc)
                self.registry_status = "no_champion" if no_champion else "unreachable"
                REGISTRY_REACHABLE.set(1 if no_champion else 0)
                RELOAD_FAILURES.inc()
                if no_champion:
                    log.warning("registry reachable but has no champion, still serving version %s: %s", previous, exc)
                else:
                    log.warning("registry unreachable, still serving version %s: %s", previous, exc)
                return {"ok": False, "error": str(exc), "model_version": previous}
            if version == previous:
                return {"ok": True, "model_version": previous, "previous_version": previous, "changed": False}
            try:
                fresh = Predictor.from_uri(uri, SETTINGS)  # fully loaded before the swap
            except Exception as exc:
                self.last_check_error = f"loading {uri} failed: {exc}"
                RELOAD_FAILURES.inc()
                log.warning("loading %s failed, still serving version %s: %s", uri, previous, exc)
                return {"ok": False, "error": self.last_check_error, "model_version": previous}
            self.predictor = fresh  # atomic reference swap: running batches keep their own reference
            self.source, self.loaded_at = "registry", time.time()
            MODEL_STORE_FALLBACK.set(0)
            RELOADS.inc()
            MODEL_VERSION.labels(version=str(previous)).set(0)
            MODEL_VERSION.labels(version=str(fresh.model_version)).set(1)
            log.info("champion moved: now serving version %s (was %s)", fresh.model_version, previous)
            return {"ok": True, "model_version": fresh.model_version, "previous_version": previous, "changed": True}

    def predict(self, rows: np.ndarray) -> list[dict[str, Any]]:
        """``rows`` (N, 787) float32: 28×28 pixels, ink [height, width], then the mode's index in ``MODES`` → one
        result dict per row, its probabilities restricted to what the row's mode allows (rows of any modes mix)."""
        from ukr_hw.inference import format_result

        predictor = self.predictor  # one model for the whole batch, even if a reload swaps meanwhile
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, ROW)
        probs, case, energy = predictor.predict_outputs(rows[:, :784].reshape(-1, 28, 28), rows[:, 784:FEATURES])
        modes = [MODES[int(m)] for m in rows[:, FEATURES]]
        version = predictor.model_version
        # the model's own "not one symbol" thresholds: energy when it stores one, else max probability (0: never)
        t, t_energy = predictor.abstain_threshold, predictor.abstain_energy
        return [
            format_result(p, float(c), version, m, t, energy=float(e), abstain_energy=t_energy)
            for p, c, e, m in zip(probs, case, energy, modes, strict=True)
        ]

    def info(self) -> dict[str, Any]:
        """The model being served, where it came from, and the last registry check (``/info``, ``/readyz``)."""
        from ukr_hw.model.network import member_nets

        return {
            "model_version": self.predictor.model_version,
            "members": len(member_nets(self.predictor.net)),
            "source": self.source,
            "loaded_at": self.loaded_at,
            "registry_reachable": self.registry_reachable,
            "last_check_error": self.last_check_error,
            "registry_status": self.registry_status,
        }
