"""The MLflow "model from code" script for ukr-hw models.

MLflow logs this file's source next to two artifacts, ``state_dict`` (``state_dict.pt``, weights only) and
``config`` (``config.json``, the :class:`~ukr_hw.model.network.NetConfig` as a dict). Loading runs the file and
rebuilds the network from those two — no pickled classes, so renaming modules never breaks an old model.

``predict(context, {"image": (N,28,28) float32, "ink": (N,2) float32})`` returns
``{"symbol_probs": (N,43) float32, "case_prob": (N,) float32}``. After ``load_context`` the attribute
``predictor`` is a ready :class:`ukr_hw.inference.Predictor` (the BentoML service calls it directly).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class UkrHwPyfunc(PythonModel):
    predictor: Any = None

    def load_context(self, context) -> None:
        from ukr_hw.inference import Predictor, load_net_from_files

        net = load_net_from_files(context.artifacts["config"], context.artifacts["state_dict"])
        version = (getattr(context, "model_config", None) or {}).get("model_version")
        self.predictor = Predictor(net, version)

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
