"""MLflow runs: where they go, what they are tagged with, and how training and evaluation log into them.

Embedded by default (a local SQLite file plus a local artifact folder); point ``UKR_HW_MLFLOW_TRACKING_URI`` at an
``http://`` MLflow server to use the stack (artifacts are then proxied by the server, clients need no S3
credentials). Every run is tagged with the git commit and the data version, so a model can always be traced back
to the code and the data it came from. Lightning's per-epoch metrics reach the run through
:func:`logger_factory` (training inside a run) or :func:`history_factory` + :func:`log_history` (training that
runs before its run starts, as a retrain does); :func:`log_eval` writes an evaluation's metrics, figures and
per-class table.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from ukr_hw.settings import Settings, get_settings


class EvalReportLike(Protocol):
    metrics: dict[str, float]
    per_class: Any  # pandas.DataFrame

    def figures(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------------------------------------------
# Setup


def _is_local(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "databricks"))


def configure(settings: Settings | None = None) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    import mlflow
    from mlflow import MlflowClient

    s = settings or get_settings()
    uri = s.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(s.mlflow_experiment)
    if exp is None:
        location = None
        if _is_local(uri):
            root = s.path(s.mlflow_artifact_root)
            root.mkdir(parents=True, exist_ok=True)
            location = root.resolve().as_uri()
        try:
            exp_id = client.create_experiment(s.mlflow_experiment, artifact_location=location)
        except Exception:
            exp = client.get_experiment_by_name(s.mlflow_experiment)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def mlflow_client(settings: Settings | None = None):
    """An MlflowClient on the configured store (configured first: see :func:`configure`)."""
    from mlflow import MlflowClient

    s = settings or get_settings()
    configure(s)
    uri = s.resolved_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def git_commit(root: Path | None = None) -> str | None:
    """HEAD's commit (``+dirty`` when tracked files changed), or None outside a git checkout."""
    cwd = str(root or get_settings().root)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None


# --------------------------------------------------------------------------------------------------------------
# Runs


@contextmanager
def start_run(
    run_name: str,
    nested: bool = False,
    tags: Mapping[str, Any] | None = None,
    data_version: str | None = None,
    settings: Settings | None = None,
) -> Iterator[Any]:
    """An MLflow run in the configured experiment, tagged with the git commit and (when given) data version."""
    import mlflow

    s = settings or get_settings()
    configure(s)
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    commit = git_commit(s.root)
    if commit:
        all_tags["git_commit"] = commit
    if data_version:
        all_tags["data_version"] = str(data_version)
    with mlflow.start_run(run_name=run_name, nested=nested, tags=all_tags) as run:
        if data_version:
            mlflow.log_param("data_version", str(data_version))
        yield run


def logger_factory(settings: Settings | None = None) -> Callable[[str], Any]:
    """``prefix -> Lightning MLFlowLogger`` writing per-epoch metrics into the run active *now*.

    The run is captured when this is called, so the loggers can be made later in another thread (a Prefect task).
    ``prefix`` keeps an ensemble's members apart (``member0-val/score``); ``""`` for a single network. Lightning's
    logger would mark the run FINISHED when training ends; these leave ending the run to :func:`start_run`, so
    evaluation and the model can still be logged into it.
    """
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("logger_factory() needs an active run: use it inside `with tracking.start_run(...)`")
    s = settings or get_settings()
    run_id = run.info.run_id

    class _RunBoundLogger(MLFlowLogger):
        def finalize(self, status: str = "success") -> None:  # the run's owner ends it
            if self._initialized and self._checkpoint_callback:
                self._scan_and_log_checkpoints(self._checkpoint_callback)

    def make(prefix: str = "") -> MLFlowLogger:
        return _RunBoundLogger(
            experiment_name=s.mlflow_experiment,
            tracking_uri=s.resolved_tracking_uri(),
            run_id=run_id,
            log_model=False,
            prefix=prefix,
        )

    return make


def history_factory() -> tuple[Callable[[str], Any], list[tuple[str, float, int]]]:
    """``(make, history)``: like :func:`logger_factory`, for training that runs before its MLflow run starts (the
    retrain flow registers after it has trained). ``make(prefix)`` gives a Lightning logger that appends
    ``(key, value, step)`` to ``history``; :func:`log_history` writes them into the run later."""
    from lightning.pytorch.loggers.logger import Logger

    history: list[tuple[str, float, int]] = []

    class _HistoryLogger(Logger):
        def __init__(self, prefix: str) -> None:
            super().__init__()
            self._prefix = prefix

        @property
        def name(self) -> str:
            return "history"

        @property
        def version(self) -> str:
            return self._prefix or "0"

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:  # the run logs the config
            pass

        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            for k, v in metrics.items():
                history.append((f"{self._prefix}-{k}" if self._prefix else k, float(v), int(step or 0)))

    return _HistoryLogger, history


def log_history(history: list[tuple[str, float, int]]) -> None:
    """Write :func:`history_factory`'s per-epoch metrics into the active run, with their steps."""
    import mlflow
    from mlflow.entities import Metric

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_history() needs an active run: use it inside `with tracking.start_run(...)`")
    now = int(1000 * time.time())
    metrics = [Metric(k, v, now, step) for k, v, step in history if math.isfinite(v)]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), 1000):  # the tracking API takes at most 1000 metrics per batch
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


def log_eval(report: EvalReportLike, prefix: str = "test") -> None:
    """Log an evaluation: metrics as ``<prefix>_<name>``, figures (confusion matrices, misclassified grid) as
    PNGs under ``eval/<prefix>/``, and per-class accuracy as an MLflow table."""
    import mlflow

    mlflow.log_metrics({f"{prefix}_{k}": v for k, v in _finite(report.metrics).items()})
    for name, fig in report.figures().items():
        mlflow.log_figure(fig, f"eval/{prefix}/{name}.png")  # plain Figure objects: nothing to close
    per_class = report.per_class
    if per_class is not None and len(per_class):
        mlflow.log_table(per_class.reset_index(drop=per_class.index.name is None), f"eval/{prefix}/per_class.json")
