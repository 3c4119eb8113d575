"""The MLflow "model from code" script for ukr-hw models: portable, it needs mlflow, torch and numpy only.

MLflow logs this file's source next to two artifacts, ``state_dict`` (``state_dict.pt``, weights only) and
``config`` (``config.json``, the :class:`~ukr_hw.model.network.NetConfig` as a dict), and one code folder:
:data:`PORTABLE_PACKAGE`, a copy of ``ukr_hw/model/network.py`` and ``ukr_hw/labels.py`` made by
:func:`ukr_hw.registry.models.log_model` (its ``ukr_hw`` imports made package-relative). Loading runs this file and
rebuilds the network from those: no pickled classes, and nothing else from ``ukr_hw`` (no settings, no
preprocessing, no registry client), so ``mlflow.pyfunc.load_model("models:/ukr-hw@champion")`` works in a fresh
environment that has only the model's ``requirements.txt``, and it never shadows an installed ``ukr_hw``.

``predict(context, {"image": (N,28,28) float32, "ink": (N,2) float32})`` returns
``{"symbol_probs": (N,43) float32, "case_prob": (N,) float32}``: the inputs are glyphs already through
``ukr_hw.preprocess`` (28×28, ink = 1, and the ink box's relative height and width) of the version the model was
trained on (``predictor.preprocess_version``). After ``load_context`` the attribute ``predictor`` has the
``predict_arrays(x, ink)`` of :class:`ukr_hw.inference.Predictor` (same batching, same outputs) and its
``abstain_threshold``: a caller refuses a glyph as "not one symbol" when its largest symbol probability is below it
(0, models logged without one: never; ``ukr_hw.model.abstain``); ``predict_outputs`` adds each glyph's energy, to
compare with ``abstain_energy`` instead where the model has one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

#: the package ``ukr_hw.registry.models.log_model`` writes into the model's code folder (``code_paths``)
PORTABLE_PACKAGE = "ukr_hw_portable"


def _network_module(context: Any) -> Any:
    """This model's own copy of the network module.

    Loaded from the model's ``code/`` folder under a name that carries a digest of the code, so two models with
    different code in one process each get theirs (a plain import would give both the first one's).
    """
    config_path = Path(context.artifacts["config"])
    package_dir = config_path.parent.parent / "code" / PORTABLE_PACKAGE  # <model>/artifacts/config.json
    if not (package_dir / "__init__.py").exists():
        return importlib.import_module(f"{PORTABLE_PACKAGE}.network")  # MLflow put the code folder on sys.path
    digest = hashlib.sha256()
    for path in sorted(package_dir.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    name = f"{PORTABLE_PACKAGE}_{digest.hexdigest()[:12]}"
    if f"{name}.network" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.network")


class ArrayPredictor:
    """A network in eval mode and the version it came from: :meth:`predict_arrays` as in
    :class:`ukr_hw.inference.Predictor` (which the repository's own tests compare it with)."""

    def __init__(
        self,
        net: Any,
        network: Any,
        model_version: str | None = None,
        batch_size: int = 256,
        preprocess_version: int = 1,
    ) -> None:
        self.net = net.eval()
        self.network = network  #: the model's own copy of the network module (its predict_arrays)
        self.model_version = None if model_version is None else str(model_version)
        self.batch_size = batch_size
        self.preprocess_version = preprocess_version
        #: the model's stored confidence threshold for "not one symbol" (0: none stored, never abstain)
        self.abstain_threshold = float(getattr(net.config, "abstain_threshold", 0.0) or 0.0)
        #: the model's stored energy threshold (None: none stored; the probability threshold applies)
        energy = getattr(net.config, "abstain_energy", None)
        self.abstain_energy = None if energy is None else float(energy)

    def predict_arrays(self, x: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x`` (N,28,28) float in [0,1] (uint8 0-255 accepted), ``ink`` (N,2) → ``(probs (N,43), P(upper) (N,))``."""
        return self.network.predict_arrays(self.net, x, ink, self.batch_size)

    def predict_outputs(self, x: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict_arrays` and the energy of each glyph (NaN when the model's own network module predates
        it), as :meth:`ukr_hw.inference.Predictor.predict_outputs`."""
        if hasattr(self.network, "predict_outputs"):
            return self.network.predict_outputs(self.net, x, ink, self.batch_size)
        probs, case = self.predict_arrays(x, ink)
        return probs, case, np.full(len(probs), np.nan, np.float32)


class UkrHwPyfunc(PythonModel):
    predictor: Any = None

    def load_context(self, context) -> None:
        import torch

        network = _network_module(context)
        config = json.loads(Path(context.artifacts["config"]).read_text())
        net = network.build_network(config)
        net.load_state_dict(torch.load(context.artifacts["state_dict"], map_location="cpu", weights_only=True))
        version = (getattr(context, "model_config", None) or {}).get("model_version")
        self.predictor = ArrayPredictor(
            net,
            network,
            version,
            preprocess_version=int(config.get("preprocess_version", 1)),
        )

    def predict(self, context, model_input, params=None):
        if self.predictor is None:
            self.load_context(context)
        if hasattr(model_input, "to_dict") and not isinstance(model_input, dict):  # a pandas frame of lists
            model_input = {k: np.stack([np.asarray(v) for v in model_input[k]]) for k in ("image", "ink")}
        if not isinstance(model_input, dict) or "image" not in model_input or "ink" not in model_input:
            raise ValueError('model input must be {"image": (N,28,28) float32, "ink": (N,2) float32}')
        probs, case = self.predictor.predict_arrays(model_input["image"], model_input["ink"])
        return {"symbol_probs": probs, "case_prob": case}


mlflow.models.set_model(UkrHwPyfunc())
