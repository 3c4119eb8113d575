"""The registry's versions: their recorded figures, which one is the champion, and moving the champion by hand.

The served model is the version under the alias ``champion`` (no MLflow stages). The gate
(:mod:`ukr_hw.registry.gate`) moves it when a new version is registered; an operator can move it here
(:func:`promote_by_hand`, ``ukr-hw promote``), and the registry keeps why. A version's frozen-test figures are
tagged on it (``test_*``) per population of writers; :func:`population_keys` names which keys those are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ukr_hw.registry.tracking import mlflow_client
from ukr_hw.settings import Settings, get_settings

METRIC_KEYS = ("symbol_accuracy", "case_accuracy")


def population_keys(metrics: Mapping[str, Any]) -> list[str]:
    """The gate's metric keys of ``metrics``: METRIC_KEYS and, per population ``p`` (a ``p_n`` key),
    ``p_n``, ``p_symbol_accuracy`` and ``p_case_accuracy``."""
    names = [k[:-2] for k in metrics if k.endswith("_n") and f"{k[:-2]}_symbol_accuracy" in metrics]
    keys = [k for k in METRIC_KEYS if k in metrics]
    for p in sorted(names):
        keys += [k for k in (f"{p}_n", f"{p}_symbol_accuracy", f"{p}_case_accuracy") if k in metrics]
    return keys


def version_metrics(client: Any, version: Any) -> dict[str, float]:
    """Frozen-test metrics of a ModelVersion: its ``test_*`` tags, completed from its run's ``test_*`` metrics."""
    tagged = {k[len("test_") :]: v for k, v in version.tags.items() if k.startswith("test_")}
    out = {k: float(tagged[k]) for k in population_keys(tagged)}
    if len(out) < len(METRIC_KEYS) and version.run_id:
        run_metrics = client.get_run(version.run_id).data.metrics
        logged = {k[len("test_") :]: v for k, v in run_metrics.items() if k.startswith("test_")}
        out = {k: float(logged[k]) for k in population_keys(logged)} | out
    return out


def get_version_metrics(version: str | int, settings: Settings | None = None) -> dict[str, float]:
    """Frozen-test metrics of a registered version (from its tags, else its run's ``test_*`` metrics)."""
    s = settings or get_settings()
    client = mlflow_client(s)
    return version_metrics(client, client.get_model_version(s.model_name, str(version)))


def champion_version(settings: Settings | None = None) -> str | None:
    """The version number under the champion alias, or None when there is none (or no such model)."""
    from mlflow.exceptions import MlflowException

    s = settings or get_settings()
    try:
        return str(mlflow_client(s).get_model_version_by_alias(s.model_name, s.champion_alias).version)
    except MlflowException:
        return None


def list_versions(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every registered version, newest first: its frozen-test metrics, whether it is the champion, the data
    version it learnt from and the ``promotion`` tag (why the gate promoted it or not)."""
    s = settings or get_settings()
    client = mlflow_client(s)
    champion = champion_version(s)
    rows = []
    for v in sorted(client.search_model_versions(f"name = '{s.model_name}'"), key=lambda v: -int(v.version)):
        rows.append(
            {
                "version": str(v.version),
                "champion": str(v.version) == champion,
                **version_metrics(client, v),
                "data_version": v.tags.get("data_version"),
                "promotion": v.tags.get("promotion"),
            }
        )
    return rows


def promote_by_hand(version: str | int, reason: str, settings: Settings | None = None) -> dict[str, Any]:
    """An operator's decision over the gate: the champion alias moves to ``version``, whose ``promotion`` tag then
    says who decided, why, and what the gate had said. Returns ``{"champion", "previous"}``.

    For a version the gate rejected by a glyph or two of the frozen split that clearly learnt what users taught
    it (its ``user_*`` metrics), or to roll back to an older champion.
    """
    from mlflow.exceptions import MlflowException

    if not reason.strip():
        raise ValueError("say why this version should be the champion (--reason): the registry keeps the reason")
    s = settings or get_settings()
    client = mlflow_client(s)
    try:
        mv = client.get_model_version(s.model_name, str(version))
    except MlflowException as exc:
        raise ValueError(
            f"model {s.model_name!r} has no version {version!r} in {s.resolved_tracking_uri()}; "
            "`ukr-hw models` lists the registered versions"
        ) from exc
    previous = champion_version(s)
    client.set_registered_model_alias(s.model_name, s.champion_alias, str(mv.version))
    gate = mv.tags.get("promotion", "no verdict")
    tag = f"promoted by hand: {reason.strip()} (champion was v{previous}; the gate had said: {gate})"
    client.set_model_version_tag(s.model_name, str(mv.version), "promotion", tag)
    return {"champion": str(mv.version), "previous": previous}


def set_champion(version: str | int, settings: Settings | None = None) -> None:
    """Move the champion alias to ``version`` (admin / tests; training uses the promotion rule)."""
    s = settings or get_settings()
    mlflow_client(s).set_registered_model_alias(s.model_name, s.champion_alias, str(version))


def load_champion_net(settings: Settings | None = None) -> Any:
    """The champion's network in eval mode (raises a clear error when nothing is registered)."""
    from ukr_hw.inference import load_net

    return load_net(None, settings)[0]
