"""MLflow tracking, the model registry, the promotion gate and lineage: everything that records what was trained.

One module per concern, each usable on its own; the public names are re-exported here, so callers write
``from ukr_hw import registry`` and ``registry.start_run(...)``, ``registry.champion_version()``, …

* :mod:`~ukr_hw.registry.tracking` — where runs go (embedded SQLite or an MLflow server), starting a tagged run,
  Lightning loggers bound to it, logging an evaluation.
* :mod:`~ukr_hw.registry.models` — logging a network as a portable pyfunc model, registering it and putting it
  through the gate (:func:`log_model_and_register`).
* :mod:`~ukr_hw.registry.versions` — registered versions: their figures, the champion alias, promotion by hand.
* :mod:`~ukr_hw.registry.gate` — the promotion rule: a paired McNemar test per population of writers.
* :mod:`~ukr_hw.registry.lineage` — feedback sample ↔ data version ↔ model version tables (SQLAlchemy); not
  imported here (``from ukr_hw.registry import lineage``), so tracking does not pull in a database driver.
"""

from ukr_hw.registry.gate import (
    HEADS,
    USERS,
    Decision,
    Evidence,
    PairedTest,
    champion_evidence,
    decide_promotion,
    evidence_of,
    mcnemar_p_worse,
)
from ukr_hw.registry.models import (
    MODEL_NAME_IN_RUN,
    PYFUNC_SCRIPT,
    Registration,
    input_example,
    log_model,
    log_model_and_register,
    model_description,
    model_signature,
)
from ukr_hw.registry.tracking import (
    EvalReportLike,
    configure,
    git_commit,
    history_factory,
    log_eval,
    log_history,
    logger_factory,
    mlflow_client,
    start_run,
)
from ukr_hw.registry.versions import (
    METRIC_KEYS,
    champion_version,
    get_version_metrics,
    list_versions,
    load_champion_net,
    population_keys,
    promote_by_hand,
    set_champion,
    version_metrics,
)

__all__ = [
    "HEADS",
    "METRIC_KEYS",
    "MODEL_NAME_IN_RUN",
    "PYFUNC_SCRIPT",
    "USERS",
    "Decision",
    "EvalReportLike",
    "Evidence",
    "PairedTest",
    "Registration",
    "champion_evidence",
    "champion_version",
    "configure",
    "decide_promotion",
    "evidence_of",
    "get_version_metrics",
    "git_commit",
    "history_factory",
    "input_example",
    "list_versions",
    "load_champion_net",
    "log_eval",
    "log_history",
    "log_model",
    "log_model_and_register",
    "logger_factory",
    "mcnemar_p_worse",
    "mlflow_client",
    "model_description",
    "model_signature",
    "population_keys",
    "promote_by_hand",
    "set_champion",
    "start_run",
    "version_metrics",
]
