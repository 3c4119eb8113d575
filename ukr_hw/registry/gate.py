"""The promotion gate: whether a new model version may take the champion alias.

Both models are scored on the very same glyphs of the frozen test split, and per population of writers (the
sample sources of the split: Rukopys scans, MNIST digits, CoMNIST sessions; for a retrain also users' held-out
drawings) a one-sided exact McNemar test on the glyphs only one of them reads right asks whether the new one is
worse (:func:`decide_promotion`)::

    every frozen population, symbol and case:  p_worse >= promotion_alpha   (not significantly worse)   and
    users' held-out drawings, symbol:          new accuracy >= the champion's (not worse at all)

Why a test and not a plain comparison of accuracies: :func:`decide_promotion` says it with the numbers. The
result is a :class:`Decision` holding every :class:`PairedTest`; :mod:`ukr_hw.registry.models` records it on the
version (tag ``promotion``) and the run. :func:`evidence_of` and :func:`champion_evidence` turn reports and the
current champion into what the gate compares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ukr_hw.registry.tracking import EvalReportLike
from ukr_hw.registry.versions import population_keys, version_metrics
from ukr_hw.settings import Settings


def _fmt(x: float) -> str:
    return f"{x:.4f}"


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


def evidence_of(report: Any) -> Evidence:
    """Per-sample outcomes of a report (an EvalReport), else its metrics (a report without predictions)."""
    if isinstance(report, Mapping):
        return report
    if callable(getattr(report, "outcomes", None)):
        return report.outcomes()
    if all(getattr(report, a, None) is not None for a in ("samples", "pred", "case_pred")):
        from ukr_hw.model.evaluate import Outcomes

        return Outcomes.of(report.samples, report.pred, report.case_pred)
    return dict(report.metrics)


def champion_evidence(
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
        return evidence_of(scored[1])
    recorded = version_metrics(client, current)
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
