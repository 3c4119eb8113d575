"""Re-fitting the case threshold on users' held-out letters (``ukr_hw.model.case_threshold``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_data import make_samples
from ukr_hw.data.arrays import Samples
from ukr_hw.model import case_threshold
from ukr_hw.model.network import build_network
from ukr_hw.training import ConfigError, finetune, load_config

LOOSE = {"min_letters": 10, "min_gain": 0.0}


def _letters(n: int, cut: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw P(upper) of ``n`` letters whose true boundary sits at ``cut``: small letters below it, capitals above."""
    rng = np.random.default_rng(seed)
    upper = rng.random(n) < 0.5
    p = np.where(upper, rng.uniform(cut + 0.02, 1.0, n), rng.uniform(0.0, cut - 0.02, n))
    return p, upper


def test_fit_moves_the_threshold_to_where_these_writers_separate():
    p, upper = _letters(200, cut=0.7)
    fit = case_threshold.fit(p, upper, configured=0.55, settings={})
    assert fit.moved and fit.letters == 200
    assert 0.68 <= fit.threshold <= 0.72 and fit.accuracy == 1.0
    assert fit.accuracy_configured < 1.0
    assert fit.metrics()["case_threshold"] == fit.threshold
    # of the thresholds that are all perfect, the one nearest the configured value wins
    plateau = case_threshold.fit(np.array([0.1, 0.2, 0.9, 0.95] * 20), np.array([0, 0, 1, 1] * 20, bool), 0.75, {})
    assert not plateau.moved and "no threshold beats" in plateau.reason  # 0.75 is already perfect
    plateau = case_threshold.fit(np.array([0.1, 0.2, 0.9, 0.95] * 20), np.array([0, 0, 1, 1] * 20, bool), 0.85, {})
    assert not plateau.moved
    plateau = case_threshold.fit(np.array([0.1, 0.2, 0.6, 0.95] * 20), np.array([0, 0, 1, 1] * 20, bool), 0.65, LOOSE)
    assert plateau.threshold == 0.59  # the perfect range is 0.2 < t < 0.6: its end nearest 0.65


def test_fit_keeps_the_configured_threshold_without_clear_evidence():
    p, upper = _letters(30, cut=0.7)
    few = case_threshold.fit(p, upper, configured=0.55, settings={"min_letters": 60})
    assert not few.moved and few.threshold == 0.55 and few.letters == 30 and "60 needed" in few.reason
    none = case_threshold.fit(np.zeros(0), np.zeros(0, bool), 0.55, {})
    assert none.threshold == 0.55 and np.isnan(none.accuracy_configured)
    # one better letter in 200 is noise, not a reason to move
    p, upper = _letters(200, cut=0.5)
    p[0], upper[0] = 0.52, False
    small_gain = case_threshold.fit(p, upper, configured=0.5, settings={"min_gain": 0.03})
    assert not small_gain.moved and small_gain.accuracy == small_gain.accuracy_configured


def test_the_guard_keeps_the_frozen_splits_kind_of_letters_within_the_gates_tolerance():
    p, upper = _letters(200, cut=0.7)  # users' letters want 0.7...
    guard = (np.array([0.6] * 10 + [0.1] * 90), np.array([True] * 10 + [False] * 90))  # ...Rukopys' capitals < 0.6
    fit = case_threshold.fit(p, upper, configured=0.55, settings={}, guard=guard)
    assert fit.threshold == 0.59 and fit.accuracy > fit.accuracy_configured  # as far as the guard allows
    assert fit.guard_letters == 100 and fit.guard_accuracy == fit.guard_accuracy_configured == 1.0
    loose = case_threshold.fit(p, upper, configured=0.55, settings={"guard_tolerance": 0.2}, guard=guard)
    assert 0.68 <= loose.threshold <= 0.72 and loose.guard_accuracy == 0.9
    # a guard that allows nothing better keeps the configured threshold
    tight = (np.array([0.56] * 10 + [0.1] * 90), np.array([True] * 10 + [False] * 90))
    kept = case_threshold.fit(p, upper, configured=0.55, settings={}, guard=tight)
    assert not kept.moved and "within the guard" in kept.reason


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"low": 0.8, "high": 0.3}, "low < high"),
        ({"min_letters": 0}, "min_letters"),
        ({"sources": "feedback"}, "list of sample sources"),
        ({"guard_tolerance": -0.1}, "guard_tolerance"),
        ({"minimum": 3}, "unknown key"),
    ],
)
def test_bad_fit_settings_are_config_errors_before_training(bad, match):
    with pytest.raises(ValueError, match=match):
        case_threshold.check(bad)
    overrides = {f"finetune.case_threshold_fit.{k}": v for k, v in bad.items()}
    with pytest.raises(ConfigError, match="case_threshold_fit"):
        finetune(load_config(None, overrides))


def test_out_of_fold_reads_raw_probabilities_of_each_members_own_letters():
    torch.manual_seed(0)
    a = build_network({"width": 4, "hidden": 16}).eval()
    b = build_network({"width": 4, "hidden": 16, "case_threshold": 0.7}).eval()
    b.load_state_dict(a.state_dict())
    val = make_samples(2, seed=3, classes=[5, 12, 20], source="feedback")  # 2 digits, 4 letters
    other = make_samples(2, seed=4, classes=[12], source="rukopys")
    mixed = Samples.concat([val, other])
    # the threshold a network carries does not change what is fitted to: its raw P(upper)
    np.testing.assert_allclose(
        case_threshold.raw_upper_probability(b, val), case_threshold.raw_upper_probability(a, val), atol=1e-5
    )
    p, upper = case_threshold.out_of_fold([a, b], [mixed, None], ["feedback"])
    assert len(p) == 4 and upper.tolist() == (val.case[val.case >= 0] == 1).tolist()
    assert len(case_threshold.out_of_fold([a], [mixed], [])[0]) == 0
