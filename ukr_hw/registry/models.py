"""Logging a network as a portable MLflow model, registering it, and putting it through the promotion gate.

:func:`log_model` writes a pyfunc model from code (``ukr_hw/model/pyfunc_model.py``, the network's state_dict and
config, and the network code it needs as the package ``ukr_hw_portable``) that loads in a fresh environment with
only its ``requirements.txt``. :func:`log_model_and_register` is what training and retraining call: log the
evaluation and the model, register a new version, tag it with its figures, data version and commit, and let the
gate (:func:`ukr_hw.registry.gate.decide_promotion`) decide whether it becomes the champion. Every version carries
the tag ``promotion`` saying what happened and why, with the numbers.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ukr_hw.registry.gate import champion_evidence, decide_promotion, evidence_of
from ukr_hw.registry.tracking import EvalReportLike, git_commit, log_eval, mlflow_client, start_run
from ukr_hw.registry.versions import population_keys
from ukr_hw.settings import Settings, get_settings

PYFUNC_SCRIPT = Path(__file__).resolve().parent.parent / "model" / "pyfunc_model.py"
MODEL_NAME_IN_RUN = "model"


@dataclass(frozen=True)
class Registration:
    version: str
    run_id: str
    promoted: bool
    reason: str


def model_signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from ukr_hw.labels import NUM_CLASSES

    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, 28, 28), "image"), TensorSpec(f32, (-1, 2), "ink")]),
        outputs=Schema([TensorSpec(f32, (-1, NUM_CLASSES), "symbol_probs"), TensorSpec(f32, (-1,), "case_prob")]),
    )


def input_example(n: int = 2) -> dict[str, np.ndarray]:
    """A small real-looking input: centred strokes and typical ink boxes."""
    x = np.zeros((n, 28, 28), dtype=np.float32)
    x[:, 6:22, 13:15] = 1.0  # a vertical stroke, like "і" / "1"
    ink = np.tile(np.array([[0.55, 0.12]], dtype=np.float32), (n, 1))
    return {"image": x, "ink": ink}


def _pip_requirements() -> list[str]:
    """Exactly what the logged pyfunc imports (``ukr_hw/model/pyfunc_model.py`` and the network code packaged
    with it): mlflow, torch and numpy, at the versions it was logged with. ``torch`` without its local label
    (``2.13.0``, not ``2.13.0+cpu``): a CPU or a CUDA build of that version both load the model."""
    import mlflow
    import numpy
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={numpy.__version__}",
    ]


def log_model(net: Any, name: str = MODEL_NAME_IN_RUN) -> Any:
    """Log ``net`` into the active run as a pyfunc model from code (state_dict + config.json); returns ModelInfo.

    Portable: the code the pyfunc needs, ``ukr_hw/model/network.py`` and ``ukr_hw/labels.py``, goes with the model
    (``code_paths``) as the package ``ukr_hw_portable`` (``PORTABLE_PACKAGE`` of the pyfunc script), with their
    ``ukr_hw`` imports made package-relative; the requirements are :func:`_pip_requirements`. So
    ``mlflow.pyfunc.load_model`` works in a fresh environment with only the model's ``requirements.txt``, and the
    copy never shadows an installed ``ukr_hw``. A new ``ukr_hw`` import in those modules fails here, by name.
    """
    import re

    import mlflow
    import torch

    from ukr_hw import labels, preprocess
    from ukr_hw.model import network
    from ukr_hw.model.network import network_config

    packaged = {"labels": Path(labels.__file__), "network": Path(network.__file__)}
    config = {**network_config(net), "preprocess_version": preprocess.VERSION}
    with tempfile.TemporaryDirectory(prefix="ukr-hw-log-") as tmp:
        state_path = Path(tmp) / "state_dict.pt"
        config_path = Path(tmp) / "config.json"
        torch.save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, state_path)
        config_path.write_text(json.dumps(config, indent=2))
        package = Path(tmp) / "ukr_hw_portable"
        package.mkdir()
        (package / "__init__.py").write_text(
            '"""ukr-hw\'s network code, packaged with a logged model by ukr_hw.registry.models.log_model."""\n'
        )
        for module, source in packaged.items():
            text = re.sub(
                r"^(\s*)from ukr_hw(?:\.model)?\.(" + "|".join(packaged) + r") import ",
                r"\1from .\2 import ",
                source.read_text(encoding="utf-8"),
                flags=re.M,
            )
            left = re.findall(r"^\s*(?:from|import)\s+ukr_hw\b.*$", text, flags=re.M)
            if left:
                raise RuntimeError(
                    f"{source} imports {left[0].strip()!r}, which the logged model does not carry: add the module "
                    "to what ukr_hw.registry.models.log_model packages (and its requirements), or drop the import"
                )
            (package / f"{module}.py").write_text(text, encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(PYFUNC_SCRIPT),
            artifacts={"state_dict": str(state_path), "config": str(config_path)},
            code_paths=[str(package)],
            signature=model_signature(),
            input_example=input_example(),
            pip_requirements=_pip_requirements(),
        )


def model_description(metrics: Mapping[str, float] | None = None) -> str:
    """A registered version's description: what it does, the data it learnt from with their sources and licences
    (CoMNIST's CC BY-SA 4.0 asks for attribution wherever a model trained on it is published), its frozen figures."""
    from ukr_hw.data.comnist import ATTRIBUTION

    lines = [
        "Two-headed CNN for hand-drawn Ukrainian letters and digits (43 symbols + upper/lower case).",
        "Trained on: Rukopys (Ukrainian handwritten letters, github.com/lynnporu/rukopys-dataset); MNIST digits "
        f"(Y. LeCun, C. Cortes, C. J. C. Burges); {ATTRIBUTION}; glyphs rendered from free fonts; users' confirmed "
        "drawings (ukr-hw feedback).",
    ]
    populations = [k[: -len("_n")] for k in population_keys(metrics or {}) if k.endswith("_n")]
    if populations:
        m = metrics or {}
        lines.append(
            "Frozen test split, symbol accuracy by population of unseen writers: "
            + ", ".join(f"{p} {m[p + '_symbol_accuracy']:.3f} (n={int(m[p + '_n'])})" for p in populations)
        )
    return "\n".join(lines)


def log_model_and_register(
    net: Any,
    *,
    report: EvalReportLike,
    data_version: str | None,
    params: Mapping[str, Any] | None = None,
    registered_name: str | None = None,
    settings: Settings | None = None,
    rejection_note: Callable[[str], str] | None = None,
    users: tuple[EvalReportLike, EvalReportLike] | None = None,
    champion_scored: tuple[str, EvalReportLike] | None = None,
) -> Registration:
    """Log the model into the active run (one is started if none is), register it and apply the promotion rule
    (:func:`decide_promotion`).

    ``users`` = (the new model's, the champion's) evaluations on users' held-out drawings (a retrain has them): the
    gate pairs them as one more population, ``users``. ``champion_scored`` = (version, evaluation) of the champion
    already scored on ``report``'s glyphs, so the gate need not score it again. (Plain metrics Mappings are
    accepted in place of evaluations, and then compared unpaired.)

    Logs ``params``, the report (via :func:`log_eval` unless ``test_*`` metrics are already in the run), the
    model, then registers it as ``registered_name`` (default ``settings.model_name``). The version's tags hold its
    frozen-test metrics, the data version, the run id, ``promotion`` = ``"promoted: …"`` / ``"rejected: …"`` with
    every population's numbers, and ``promotion_tests`` (the tests as JSON); for a rejected version,
    ``rejection_note(version)`` is appended to ``promotion`` (the operator's evidence). The run gets the same
    tag, the tests as ``gate_*`` metrics and ``gate/promotion.json``.
    """
    import mlflow

    s = settings or get_settings()
    name = registered_name or s.model_name
    if mlflow.active_run() is None:
        with start_run("register", data_version=data_version, settings=s):
            return log_model_and_register(
                net,
                report=report,
                data_version=data_version,
                params=params,
                registered_name=name,
                settings=s,
                rejection_note=rejection_note,
                users=users,
                champion_scored=champion_scored,
            )
    client = mlflow_client(s)
    run = mlflow.active_run()
    run_id = run.info.run_id
    if params:
        existing = client.get_run(run_id).data.params
        mlflow.log_params({k: v for k, v in params.items() if k not in existing})
    if data_version:
        mlflow.set_tag("data_version", str(data_version))
    logged = client.get_run(run_id).data.metrics
    if "test_symbol_accuracy" not in logged:
        log_eval(report, "test")
    info = log_model(net)
    mv = mlflow.register_model(info.model_uri, name, tags={"run_id": run_id})
    version = str(mv.version)
    new = {k: float(report.metrics[k]) for k in population_keys(report.metrics)}
    for k, v in new.items():
        client.set_model_version_tag(name, version, f"test_{k}", repr(v))
    if data_version:
        client.set_model_version_tag(name, version, "data_version", str(data_version))
    client.update_model_version(name, version, description=model_description(report.metrics))
    commit = git_commit(s.root)
    if commit:
        client.set_model_version_tag(name, version, "git_commit", commit)

    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, s.champion_alias)
    except MlflowException:
        current = None
    champ = None if current is None else champion_evidence(client, current, report, s, champion_scored)
    pair = None if users is None else (evidence_of(users[0]), evidence_of(users[1]))  # both on the same drawings
    decision = decide_promotion(evidence_of(report), champ, s.promotion_alpha, users=pair)
    promote, why = decision.promote, decision.reason
    if decision.tests:
        mlflow.log_metrics(decision.metrics())
        mlflow.log_dict(decision.as_dict(), "gate/promotion.json")
        tests = json.dumps(decision.as_dict()["tests"], separators=(",", ":"))
        client.set_model_version_tag(name, version, "promotion_tests", tests)
    if current is not None:
        why = f"{why} (champion was v{current.version})"
    if promote:
        client.set_registered_model_alias(name, s.champion_alias, version)
    reason = f"{'promoted' if promote else 'rejected'}: {why}"
    if not promote and rejection_note is not None:
        reason += rejection_note(version)
    client.set_model_version_tag(name, version, "promotion", reason)
    mlflow.set_tag("promotion", reason)
    mlflow.set_tag("model_version", version)
    return Registration(version=version, run_id=run_id, promoted=promote, reason=reason)
