"""The case operating point: re-fitting ``case_threshold`` on other writers' letters the members did not train on.

The case head learns the proportions of the handwriting it trains on (mostly Rukopys), so the P(upper) above which
a letter counts as uppercase is a setting (``finetune.case_threshold``, 0.55: chosen on held-out fonts and drawings,
README, Measured). Once users have confirmed enough drawings, *their* letters say where the threshold should sit.

Every fine-tuned member keeps its own validation slice of the real training glyphs, feedback included, out of its
training. :func:`out_of_fold` gathers each member's raw P(upper) on its own slice's letters from the chosen sources
(``finetune.case_threshold_fit.sources``, default ``feedback``): predictions on glyphs no member learned from.
:func:`fit` then picks the threshold with the best case accuracy on them — but only with at least ``min_letters``
letters, and only if it beats the configured threshold by ``min_gain`` (a share of the letters), so that a few
noisy letters never move it. Ties go to the threshold nearest the configured one.

The promotion gate judges case accuracy on the frozen Rukopys split, so a threshold fitted to users alone could
cost it more than the gate allows, and the retrained model would be refused. The fit therefore only considers
thresholds that keep the case accuracy of the members' held-out *Rukopys* letters (``guard_sources``) within
``guard_tolerance`` of its value at the configured threshold: the gate's rule, checked on validation data, never on
the frozen split itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ukr_hw.data.arrays import Samples
from ukr_hw.model.evaluate import predict_samples
from ukr_hw.model.network import Network, UkrHwNet, member_nets

#: ``finetune.case_threshold_fit`` defaults (the fields of ukr_hw.training.config.CaseThresholdFit)
DEFAULTS: dict[str, Any] = {
    "sources": ["feedback"],  #: whose held-out letters re-fit the threshold (empty: never re-fit)
    "min_letters": 60,  #: fewer held-out letters than this: the configured threshold stays
    "min_gain": 0.03,  #: the fitted threshold must beat the configured one by this share of the letters
    "low": 0.3,  #: the range searched, in steps of 0.01
    "high": 0.8,
    "guard_sources": ["rukopys"],  #: held-out letters whose case accuracy the fit may lower only by...
    "guard_tolerance": 0.01,  #: ...this much (the gate refuses a significant case loss on the frozen split)
}


@dataclass(frozen=True)
class ThresholdFit:
    """What :func:`fit` decided, and on how much evidence."""

    threshold: float  #: the threshold to use
    configured: float  #: ``finetune.case_threshold``
    letters: int  #: held-out letters it was fitted on
    accuracy_configured: float  #: their case accuracy at the configured threshold (nan without letters)
    accuracy: float  #: their case accuracy at :attr:`threshold`
    reason: str
    guard_letters: int = 0  #: held-out letters of the guard sources
    guard_accuracy_configured: float = math.nan  #: their case accuracy at the configured threshold
    guard_accuracy: float = math.nan  #: and at :attr:`threshold`

    @property
    def moved(self) -> bool:
        return self.threshold != self.configured

    def metrics(self) -> dict[str, float]:
        """For MLflow: the threshold used and the evidence behind it."""
        return {
            "case_threshold": self.threshold,
            "case_threshold_fit_letters": float(self.letters),
            "case_threshold_fit_accuracy_configured": self.accuracy_configured,
            "case_threshold_fit_accuracy": self.accuracy,
            "case_threshold_guard_letters": float(self.guard_letters),
            "case_threshold_guard_accuracy_configured": self.guard_accuracy_configured,
            "case_threshold_guard_accuracy": self.guard_accuracy,
        }


def check(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The fit settings over :data:`DEFAULTS`; :class:`ValueError` names what is wrong."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **settings}
    for key in ("sources", "guard_sources"):
        sources = cfg[key]
        if not isinstance(sources, list | tuple) or not all(isinstance(x, str) for x in sources):
            raise ValueError(f"{key} must be a list of sample sources (e.g. [feedback]), got {sources!r}")
    if not 0.0 <= float(cfg["guard_tolerance"]) < 1.0:
        raise ValueError(f"need 0 <= guard_tolerance < 1, got {cfg['guard_tolerance']}")
    if not 0.0 < float(cfg["low"]) < float(cfg["high"]) < 1.0:
        raise ValueError(f"need 0 < low < high < 1, got low={cfg['low']} high={cfg['high']}")
    if int(cfg["min_letters"]) < 1 or not 0.0 <= float(cfg["min_gain"]) < 1.0:
        raise ValueError(f"need min_letters >= 1 and 0 <= min_gain < 1, got {cfg['min_letters']}, {cfg['min_gain']}")
    return cfg


@contextmanager
def raw_case(net: Network) -> Iterator[Network]:
    """``net`` answering with its P(upper) before its own threshold (every member at 0.5); restored afterwards."""
    members = member_nets(net)
    own = [m.config for m in members]
    for m in members:
        m.config = replace(m.config, case_threshold=0.5)
    try:
        yield net
    finally:
        for m, config in zip(members, own, strict=True):
            m.config = config


def raw_upper_probability(net: UkrHwNet, samples: Samples) -> np.ndarray:
    """The network's P(upper) before its own threshold is applied (what a threshold is fitted to): the case head's,
    with the memory's case vote when it has one."""
    with raw_case(net):
        return predict_samples(net, samples)[1]


def out_of_fold(
    members: Sequence[UkrHwNet], val_slices: Sequence[Samples | None], sources: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(raw P(upper), is_upper)`` of each member on its own validation slice's letters from ``sources``."""
    probs, truth = [np.zeros(0)], [np.zeros(0, dtype=bool)]
    wanted = set(sources)
    for member, val in zip(members, val_slices, strict=True):
        if val is None or not len(val) or not wanted:
            continue
        keep = np.flatnonzero((val.case >= 0) & np.isin(val.source, list(wanted)))
        if keep.size:
            part = val.subset(keep)
            probs.append(raw_upper_probability(member, part))
            truth.append(part.case == 1)
    return np.concatenate(probs), np.concatenate(truth)


def _accuracy(p: np.ndarray, is_upper: np.ndarray, threshold: float) -> float:
    return float(((p > threshold) == is_upper).mean()) if len(p) else math.nan


def fit(
    p_upper: np.ndarray,
    is_upper: np.ndarray,
    configured: float,
    settings: Mapping[str, Any],
    guard: tuple[np.ndarray, np.ndarray] | None = None,
) -> ThresholdFit:
    """The threshold for these held-out letters' raw P(upper); the configured one unless the evidence is clear.

    ``guard`` — ``(raw P(upper), is_upper)`` of the held-out letters whose case accuracy may fall by at most
    ``guard_tolerance`` (the frozen split's kind of handwriting).
    """
    cfg = check(settings)
    n = len(p_upper)
    before = _accuracy(p_upper, is_upper, configured)
    g_p, g_up = guard if guard is not None else (np.zeros(0), np.zeros(0, dtype=bool))
    g_before = _accuracy(g_p, g_up, configured)

    def keep(reason: str) -> ThresholdFit:
        return ThresholdFit(configured, configured, n, before, before, reason, len(g_p), g_before, g_before)

    if n == 0 or n < int(cfg["min_letters"]):
        return keep(f"{n} held-out letters, {cfg['min_letters']} needed")
    grid = np.round(np.arange(float(cfg["low"]), float(cfg["high"]) + 1e-9, 0.01), 2)
    if len(g_p):
        floor = g_before - float(cfg["guard_tolerance"]) - 1e-9
        grid = grid[[_accuracy(g_p, g_up, t) >= floor for t in grid]]
    accs = np.array([_accuracy(p_upper, is_upper, t) for t in grid])
    if not len(grid) or accs.max() <= before or accs.max() - before < float(cfg["min_gain"]):
        return keep(f"no threshold beats {configured} by {float(cfg['min_gain']):.0%} within the guard")
    best = accs.max()
    ties = grid[accs == best]
    chosen = float(ties[np.argmin(np.abs(ties - configured))])
    reason = f"re-fitted on {n} held-out letters"
    return ThresholdFit(
        chosen, configured, n, before, float(best), reason, len(g_p), g_before, _accuracy(g_p, g_up, chosen)
    )
