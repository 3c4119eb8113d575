"""MLflow: runs, evaluation logging, model logging, registration and promotion by alias.

Embedded by default (a local SQLite file plus a local artifact folder); point ``UKR_HW_MLFLOW_TRACKING_URI`` at an
``http://`` MLflow server to use the stack (artifacts are then proxied by the server, clients need no S3
credentials). Stages are not used: the served model is the version under the alias ``champion``, which moves
only when the evidence says a new version is not worse: both models are scored on the very same glyphs of the
frozen test split, and per population of writers (the sample sources of the split: Rukopys scans, MNIST digits,
CoMNIST sessions; for a retrain also users' held-out drawings) a one-sided exact McNemar test on the glyphs only
one of them reads right asks whether the new one is worse (:func:`decide_promotion`)::

    every frozen population, symbol and case:  p_worse >= promotion_alpha   (not significantly worse)   and
    users' held-out drawings, symbol:          new accuracy >= the champion's (not worse at all)

Every version carries the tag ``promotion`` saying what happened and why, with the numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ukr_hw.settings import Settings, get_settings

PYFUNC_SCRIPT = Path(__file__).resolve().parent / "model" / "pyfunc_model.py"
MODEL_NAME_IN_RUN = "model"
METRIC_KEYS = ("symbol_accuracy", "case_accuracy")


class EvalReportLike(Protocol):
    metrics: dict[str, float]
    per_class: Any  # pandas.DataFrame

    def figures(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Registration:
    version: str
    run_id: str
    promoted: bool
    reason: str


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


def _client(settings: Settings | None = None):
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


# --------------------------------------------------------------------------------------------------------------
# Model logging and the registry


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
            '"""ukr-hw\'s network code, packaged with a logged model by ukr_hw.tracking.log_model."""\n'
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
                    "to what ukr_hw.tracking.log_model packages (and its requirements), or drop the import"
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


def population_keys(metrics: Mapping[str, Any]) -> list[str]:
    """The gate's metric keys of ``metrics``: METRIC_KEYS and, per population ``p`` (a ``p_n`` key),
    ``p_n``, ``p_symbol_accuracy`` and ``p_case_accuracy``."""
    names = [k[:-2] for k in metrics if k.endswith("_n") and f"{k[:-2]}_symbol_accuracy" in metrics]
    keys = [k for k in METRIC_KEYS if k in metrics]
    for p in sorted(names):
        keys += [k for k in (f"{p}_n", f"{p}_symbol_accuracy", f"{p}_case_accuracy") if k in metrics]
    return keys


def _version_metrics(client: Any, version: Any) -> dict[str, float]:
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
    client = _client(s)
    return _version_metrics(client, client.get_model_version(s.model_name, str(version)))


def champion_version(settings: Settings | None = None) -> str | None:
    """The version number under the champion alias, or None when there is none (or no such model)."""
    from mlflow.exceptions import MlflowException

    s = settings or get_settings()
    try:
        return str(_client(s).get_model_version_by_alias(s.model_name, s.champion_alias).version)
    except MlflowException:
        return None


def list_versions(settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every registered version, newest first: its frozen-test metrics, whether it is the champion, the data
    version it learnt from and the ``promotion`` tag (why the gate promoted it or not)."""
    s = settings or get_settings()
    client = _client(s)
    champion = champion_version(s)
    rows = []
    for v in sorted(client.search_model_versions(f"name = '{s.model_name}'"), key=lambda v: -int(v.version)):
        rows.append(
            {
                "version": str(v.version),
                "champion": str(v.version) == champion,
                **_version_metrics(client, v),
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
    client = _client(s)
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
    _client(s).set_registered_model_alias(s.model_name, s.champion_alias, str(version))


def load_champion_net(settings: Settings | None = None) -> Any:
    """The champion's network in eval mode (raises a clear error when nothing is registered)."""
    from ukr_hw.inference import load_net

    return load_net(None, settings)[0]


def _fmt(x: float) -> str:
    return f"{x:.4f}"


# --------------------------------------------------------------------------------------------------------------
# The promotion gate: a paired test per population of writers

HEADS = ("symbol", "case")
USERS = "users"  #: the population of users' held-out drawings (a retrain scores both models on them)


def mcnemar_p_worse(new_only: int, champion_only: int) -> float:
    """One-sided exact McNemar p-value that the new model is worse than the champion on the same glyphs.

    Only the discordant glyphs carry evidence: ``new_only`` the new model reads right and the champion wrong,
    ``champion_only`` the other way round. Were both equally good, each discordant glyph would fall either way
    with probability 1/2, so the p-value is P(X >= champion_only) for X ~ Binomial(new_only + champion_only, 1/2)
    (1.0 when no glyph is discordant)."""
    if new_only < 0 or champion_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {new_only} and {champion_only}")
    m = new_only + champion_only
    if m == 0:
        return 1.0
    return min(1.0, sum(math.comb(m, k) for k in range(champion_only, m + 1)) / 2**m)  # exact: ints, one division


@dataclass(frozen=True)
class PairedTest:
    """One head (symbol or case) of one population: the new model against the champion on the same glyphs."""

    population: str
    head: str  #: "symbol" or "case"
    n: int  #: glyphs both were scored on (for case: those with a case label)
    new_accuracy: float
    champion_accuracy: float
    new_only: int | None  #: glyphs only the new model reads right; None when unpaired (the champion's record)
    champion_only: int | None  #: glyphs only the champion reads right
    p_worse: float  #: one-sided exact McNemar p-value of "the new model is worse"; NaN when unpaired
    rule: str  #: "not significantly worse" (p_worse >= alpha) or "not worse" (the point estimate may not drop)
    passed: bool

    def describe(self) -> str:
        """``rukopys symbol 0.8830 vs 0.8889 (n=171, +2/-3, p=0.500)``: new vs champion, glyphs only the new model /
        only the champion reads right, the p-value."""
        if self.new_only is None:
            evidence = "unpaired: the champion's recorded figure"
        else:
            p = f"p={self.p_worse:.3g}" if self.rule == "not significantly worse" else "point estimate"
            evidence = f"+{self.new_only}/-{self.champion_only}, {p}"
        return (
            f"{self.population} {self.head} {_fmt(self.new_accuracy)} vs {_fmt(self.champion_accuracy)} "
            f"(n={self.n}, {evidence})"
        )

    def problem(self, alpha: float) -> str:
        """Why this test refuses the new model (for a failed test)."""
        if self.rule == "not worse":
            return f"{self.head}_accuracy on {self.population} worse, where it may not drop: {self.describe()}"
        return (
            f"{self.head}_accuracy on {self.population} significantly worse (p {self.p_worse:.3g} < {alpha:g}): "
            f"{self.describe()}"
        )


@dataclass(frozen=True)
class Decision:
    """What the gate decided (``promote``), why with the numbers (``reason``), and every test it ran."""

    promote: bool
    reason: str
    tests: tuple[PairedTest, ...] = ()
    alpha: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "alpha": self.alpha,
            "tests": [
                {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in t.__dict__.items()}
                for t in self.tests
            ],
        }

    def metrics(self) -> dict[str, float]:
        """For the MLflow run: ``gate_promote`` and, per test, ``gate_<population>_<head>_{p_worse,new_only,
        champion_only}``."""
        import re

        out = {"gate_promote": float(self.promote)}
        for t in self.tests:
            key = re.sub(r"[^\w\-./ ]", "_", f"gate_{t.population}_{t.head}")  # what MLflow takes in a name
            if t.new_only is not None:
                out |= {f"{key}_new_only": float(t.new_only), f"{key}_champion_only": float(t.champion_only or 0)}
            if math.isfinite(t.p_worse):
                out[f"{key}_p_worse"] = t.p_worse
        return out


Evidence = Any  #: ukr_hw.model.evaluate.Outcomes (per sample: paired) or a Mapping of metrics (recorded: unpaired)


def _is_outcomes(x: Any) -> bool:
    return all(hasattr(x, a) for a in ("id", "source", "symbol", "case"))


def _align(new: Any, champion: Any) -> tuple[Any, Any]:
    """The two models' outcomes on the glyphs both were scored on, in the same order (paired by sample id)."""
    if len(new) == len(champion) and np.array_equal(new.id, champion.id):
        return new, champion
    where = {sid: i for i, sid in enumerate(champion.id.tolist())}
    pairs = [(i, where[sid]) for i, sid in enumerate(new.id.tolist()) if sid in where]
    a = np.asarray([i for i, _ in pairs], dtype=np.int64)
    b = np.asarray([j for _, j in pairs], dtype=np.int64)
    return new.subset(a), champion.subset(b)


def _paired(population: str, head: str, new: np.ndarray, champ: np.ndarray, alpha: float, strict: bool) -> PairedTest:
    """The test of one head of one population; ``strict``: the point estimate may not drop (users' drawings)."""
    new_only, champion_only = int((new & ~champ).sum()), int((~new & champ).sum())
    p = mcnemar_p_worse(new_only, champion_only)
    rule = "not worse" if strict else "not significantly worse"
    return PairedTest(
        population=population,
        head=head,
        n=len(new),
        new_accuracy=float(new.mean()),
        champion_accuracy=float(champ.mean()),
        new_only=new_only,
        champion_only=champion_only,
        p_worse=p,
        rule=rule,
        passed=new_only >= champion_only if strict else p >= alpha,
    )


def _figures(metrics: Mapping[str, float]) -> dict[str, dict[str, tuple[int, float]]]:
    """Recorded metrics as ``{population: {head: (n, accuracy)}}``; the whole split as ``all`` without any."""
    out: dict[str, dict[str, tuple[int, float]]] = {}
    populations = [k[: -len("_n")] for k in population_keys(metrics) if k.endswith("_n")]
    for p, prefix in [(p, f"{p}_") for p in populations] or [("all", "")]:
        n = int(float(metrics.get(f"{prefix}n", 0) or 0))
        heads = {h: (n, float(metrics.get(f"{prefix}{h}_accuracy", math.nan))) for h in HEADS}
        out[p] = {h: v for h, v in heads.items() if math.isfinite(v[1])}
    return out


def _compare(new: Evidence, champion: Evidence, alpha: float, users: bool = False) -> list[PairedTest]:
    """Every test of one comparison: paired when both sides are per-sample outcomes, else (a champion that could
    not be re-scored) the recorded figures, where the new model may not be worse at all."""
    tests = []
    if users:  # users' held-out drawings are one population, whatever their sources
        new, champion = (_as_users(x) if isinstance(x, Mapping) else x.as_population(USERS) for x in (new, champion))
    if _is_outcomes(new) and _is_outcomes(champion):
        for p in sorted(set(new.populations()) & set(champion.populations())):
            a, b = _align(new.subset(new.source == p), champion.subset(champion.source == p))
            if not len(a):
                continue
            tests.append(_paired(p, "symbol", a.symbol, b.symbol, alpha, strict=users))
            cased = (a.case >= 0) & (b.case >= 0)
            if cased.any():
                tests.append(_paired(p, "case", a.case[cased] == 1, b.case[cased] == 1, alpha, strict=False))
        return tests
    new_f, champ_f = (_figures(x) if isinstance(x, Mapping) else _figures(_outcome_metrics(x)) for x in (new, champion))
    for p in sorted(set(new_f) & set(champ_f)):
        for h in HEADS:
            if h in new_f[p] and h in champ_f[p]:
                (n, a), (_, b) = new_f[p][h], champ_f[p][h]
                tests.append(PairedTest(p, h, n, a, b, None, None, math.nan, "not worse", a >= b - 1e-12))
    return tests


def _outcome_metrics(o: Any) -> dict[str, float]:
    """Per-population metrics of outcomes (to compare them with a champion's recorded figures)."""
    out: dict[str, float] = {}
    for p in o.populations():
        sel = o.source == p
        out[f"{p}_n"] = float(sel.sum())
        out[f"{p}_symbol_accuracy"] = float(o.symbol[sel].mean())
        cased = sel & (o.case >= 0)
        if cased.any():
            out[f"{p}_case_accuracy"] = float((o.case[cased] == 1).mean())
    return out


def decide_promotion(
    new: Evidence,
    champion: Evidence | None,
    alpha: float = 0.05,
    users: tuple[Evidence, Evidence] | None = None,
) -> Decision:
    """The promotion rule: a paired test per population of writers, on the very glyphs both models were scored on.

    ``new`` and ``champion`` are :class:`ukr_hw.model.evaluate.Outcomes` on the frozen test split (the champion
    re-scored on the new model's glyphs); ``users`` = (new, champion) outcomes on users' held-out drawings, which
    count as one more population, ``users``. For each population (the samples' source: Rukopys, MNIST, CoMNIST
    sessions, …) and each head (symbol, and case over the case-labelled glyphs), a one-sided exact McNemar test
    (:func:`mcnemar_p_worse`) asks whether the new model is *worse*; the new model is promoted when

    * no frozen population is significantly worse (``p_worse >= alpha``) on symbol or on case, and
    * on users' held-out drawings its symbol accuracy is not worse at all (point estimate: at least as many
      glyphs only it reads right as glyphs only the champion reads right), and their case not significantly
      worse.

    Why a test rather than "accuracy >= the champion's": on 171 Rukopys scans one glyph is 0.6 points, and two
    fine-tunes of one recipe differ by several glyphs either way, so a point estimate refuses a better model for
    noise (3 glyphs of 271) while a margin lets a real loss through on a large population. Only the discordant
    glyphs carry evidence: +2/-5 (p=0.23) is noise, +1/-9 (p=0.011) a regression. Users' drawings are judged by
    the point estimate because they are what a retrain is for: a new model that does not read them at least as
    well as the champion gains nothing worth a swap, and a week's held-out drawings are too few for a test to
    have power there. Each test runs at ``alpha`` on its own (no multiplicity correction: a correction would
    weaken the guard against the regression it exists for; identical models are never refused, p = 1).

    A side given as a Mapping of metrics (a champion that could not be loaded to be re-scored: its recorded
    figures) is compared unpaired, and there the new model may not be worse at all on any population both were
    scored on (``all``: the whole split, for records without populations).
    """
    if champion is None:
        return Decision(True, "first model: no champion yet", (), alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"the gate's significance level must be in (0, 1), got {alpha}: set UKR_HW_PROMOTION_ALPHA")
    tests = _compare(new, champion, alpha)
    if users is not None:
        tests += _compare(users[0], users[1], alpha, users=True)
    if not tests:
        return Decision(
            False, "no population both models were scored on: nothing shows the new model is as good", (), alpha
        )
    failed = [t for t in tests if not t.passed]
    failed.sort(key=lambda t: HEADS.index(t.head))  # symbol first: the headline of a rejection
    paired = any(t.new_only is not None for t in tests)
    legend = (
        f"one-sided exact McNemar, alpha {alpha:g}; +a/-b: glyphs only the new model / only the champion reads right"
        if paired
        else "unpaired: the champion could not be re-scored, so the new model may not be worse anywhere"
    )
    detail = "; ".join(t.describe() for t in tests)
    if failed:
        reason = "; ".join(t.problem(alpha) for t in failed) + f" ({legend}; all: {detail})"
        return Decision(False, reason, tuple(tests), alpha)
    has_users = any(t.population == USERS for t in tests)
    verdict = f"no population {'significantly ' if paired else ''}worse"
    verdict += " and users' drawings not worse" if has_users else ""
    return Decision(True, f"{verdict} ({legend}): {detail}", tuple(tests), alpha)


def _as_users(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics of users' held-out drawings as the population ``users``."""
    out = {f"{USERS}_n": float(metrics.get("n", 0)), f"{USERS}_symbol_accuracy": float(metrics["symbol_accuracy"])}
    if math.isfinite(float(metrics.get("case_accuracy", math.nan))):
        out[f"{USERS}_case_accuracy"] = float(metrics["case_accuracy"])
    return out


def _evidence(report: Any) -> Evidence:
    """Per-sample outcomes of a report (an EvalReport), else its metrics (a report without predictions)."""
    if isinstance(report, Mapping):
        return report
    if callable(getattr(report, "outcomes", None)):
        return report.outcomes()
    if all(getattr(report, a, None) is not None for a in ("samples", "pred", "case_pred")):
        from ukr_hw.model.evaluate import Outcomes

        return Outcomes.of(report.samples, report.pred, report.case_pred)
    return dict(report.metrics)


def _champion_evidence(
    client: Any,
    current: Any,
    report: EvalReportLike,
    settings: Settings,
    scored: tuple[str, Any] | None = None,
) -> Evidence:
    """The champion's outcomes on the very glyphs the new model was scored on (``report.samples``), so that the
    gate pairs them glyph by glyph on every population of today's split; its recorded metrics (unpaired) when it
    cannot be loaded or the report has no samples.

    ``scored`` = (version, EvalReport) of a champion the caller already scored on those glyphs (a retrain does,
    before training): used when that version still holds the alias, instead of loading and scoring it again."""
    import logging

    from ukr_hw.inference import load_net
    from ukr_hw.model.evaluate import evaluate

    if scored is not None and str(scored[0]) == str(current.version) and not isinstance(scored[1], Mapping):
        return _evidence(scored[1])
    recorded = _version_metrics(client, current)
    samples = getattr(report, "samples", None)
    if samples is None or not len(samples):
        return recorded
    try:
        net, _ = load_net(f"models:/{current.name}/{current.version}", settings)
        return evaluate(net, samples).outcomes()
    except Exception as exc:  # an unloadable champion is judged by what it recorded
        logging.getLogger(__name__).warning(
            "champion v%s not re-scored (%s); using its recorded metrics", current.version, exc
        )
        return recorded


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
    client = _client(s)
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
    champ = None if current is None else _champion_evidence(client, current, report, s, champion_scored)
    pair = None if users is None else (_evidence(users[0]), _evidence(users[1]))  # both on the same drawings
    decision = decide_promotion(_evidence(report), champ, s.promotion_alpha, users=pair)
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
