"""Merge and split the fine-tune set, with a FROZEN test split.

The first run draws a stratified test split (by symbol and case) and persists its ids — in
``processed_dir/test_ids.txt`` (versioned by DVC with the data) and in ``settings.frozen_test_ids`` (a copy kept
in git). Every later run, and every later data version, reuses exactly those ids, in that order: the test set
never changes, so models stay comparable. New samples only ever join the training split
(:func:`append_to_train`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from ukr_hw.data.arrays import Samples, load_samples, save_samples
from ukr_hw.settings import Settings

log = logging.getLogger(__name__)

TRAIN_FILE = "finetune_train.npz"
TEST_FILE = "finetune_test.npz"
TEST_IDS_FILE = "test_ids.txt"
COMNIST_TEST_IDS_FILE = "test_ids_comnist.txt"


class SplitError(ValueError):
    """The frozen test split cannot be rebuilt from the data; the message names the missing samples."""


def stratified_test_ids(samples: Samples, test_fraction: float, seed: int) -> list[str]:
    """Ids of a stratified test draw: ``round(n × fraction)`` of every (symbol, case) group (groups of 1: none)."""
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for sid, y, c in zip(samples.id, samples.y, samples.case, strict=True):
        groups[(int(y), int(c))].append(str(sid))
    rng = np.random.default_rng(seed)
    test: list[str] = []
    for key in sorted(groups):
        ids = sorted(groups[key])
        n_test = round(len(ids) * test_fraction) if len(ids) > 1 else 0
        n_test = min(n_test, len(ids) - 1)
        test.extend(ids[i] for i in sorted(rng.permutation(len(ids))[:n_test]))
    return test


def _read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_ids(ids: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    os.replace(tmp, path)


def frozen_test_ids(settings: Settings) -> list[str] | None:
    """The frozen test ids: the git copy (``settings.frozen_test_ids``) wins, else the processed copy, else None."""
    git_copy = settings.path(settings.frozen_test_ids)
    data_copy = settings.processed_dir / TEST_IDS_FILE
    for path in (git_copy, data_copy):
        if path.exists():
            ids = _read_ids(path)
            if ids:
                return ids
    return None


def persist_test_ids(ids: list[str], settings: Settings) -> None:
    """Write the ids next to the data (always) and the git copy (only when there is none yet)."""
    _write_ids(ids, settings.processed_dir / TEST_IDS_FILE)
    git_copy = settings.path(settings.frozen_test_ids)
    if not git_copy.exists():
        _write_ids(ids, git_copy)
        log.info("froze the test split: %d ids in %s (commit this file)", len(ids), git_copy)


def comnist_test_ids(pool: Samples, settings: Settings) -> list[str]:
    """The CoMNIST part of the frozen test split: the git copy (``settings.comnist_frozen_test_ids``), else the
    processed copy, else whole sessions drawn now (``test_fraction`` of the drawings) and frozen in both."""
    from ukr_hw.data.comnist import pick_sessions, session_of

    git_copy = settings.path(settings.comnist_frozen_test_ids)
    for path in (git_copy, settings.processed_dir / COMNIST_TEST_IDS_FILE):
        if path.exists() and (ids := _read_ids(path)):
            break
    else:
        ids = [str(i) for i in pool.id if str(i).startswith("comnist/")]
        sessions = pick_sessions(ids, settings.test_fraction, settings.seed)
        ids = [i for i in ids if session_of(i) in sessions]
        log.info("drew the CoMNIST test sessions: %d sessions, %d drawings", len(sessions), len(ids))
    _write_ids(ids, settings.processed_dir / COMNIST_TEST_IDS_FILE)
    if not git_copy.exists() and ids:
        _write_ids(ids, git_copy)
        log.info("froze the CoMNIST test sessions: %d ids in %s (commit this file)", len(ids), git_copy)
    return ids


def split(pool: Samples, settings: Settings) -> tuple[Samples, Samples]:
    """Pool → (train, test). The test split is the frozen one when it exists, else drawn now and frozen: stratified
    for Rukopys and MNIST, whole drawing sessions for CoMNIST (a session is never in both)."""
    from ukr_hw.data.comnist import session_of

    if len(set(pool.id.tolist())) != len(pool):
        raise SplitError("the fine-tune pool has duplicate sample ids; each sample must have a unique id.")
    is_comnist = pool.source == "comnist"
    others = pool.subset(np.flatnonzero(~is_comnist))
    ids = frozen_test_ids(settings)
    if ids is None:
        ids = stratified_test_ids(others, settings.test_fraction, settings.seed)
        log.info("drew a new stratified test split: %d of %d samples", len(ids), len(others))
    comnist_ids = comnist_test_ids(pool.subset(np.flatnonzero(is_comnist)), settings) if is_comnist.any() else []
    position = {sid: i for i, sid in enumerate(pool.id.tolist())}
    for listed, where in ((ids, settings.frozen_test_ids), (comnist_ids, settings.comnist_frozen_test_ids)):
        missing = [i for i in listed if i not in position]
        if missing:
            raise SplitError(
                f"{len(missing)} frozen test sample(s) are not in the data (e.g. {', '.join(missing[:5])}); the test "
                f"split in {settings.path(where)} must never change: restore the raw data "
                "(`dvc pull`, or the full data mirror) rather than editing the split."
            )
    test_sessions, listed = {session_of(i) for i in comnist_ids}, set(comnist_ids)
    strays = [str(i) for i in pool.id[is_comnist] if session_of(i) in test_sessions and i not in listed]
    if strays:  # a new drawing of a test session (the data grew): the session stays whole, in test only
        log.warning("%d CoMNIST drawings of frozen test sessions are not listed; kept out of training", len(strays))
    ids = [*ids, *comnist_ids]
    test_idx = np.array([position[i] for i in ids], dtype=np.int64)
    train_mask = np.ones(len(pool), dtype=bool)
    train_mask[test_idx] = False
    train_mask[[position[i] for i in strays]] = False
    persist_test_ids(ids[: len(ids) - len(comnist_ids)], settings)
    return _compact(pool.subset(np.flatnonzero(train_mask))), _compact(pool.subset(test_idx))


def _compact(s: Samples) -> Samples:
    """String columns at their own minimal width, so a split's bytes do not depend on what else was in the pool."""
    return Samples(x=s.x, y=s.y, case=s.case, ink=s.ink, source=s.source.tolist(), id=s.id.tolist())


def save_split(train: Samples, test: Samples, settings: Settings) -> tuple[Path, Path]:
    """Write both splits; the test file is rewritten only when its content changed (it never should)."""
    out = settings.processed_dir
    test_path = out / TEST_FILE
    if not (test_path.exists() and load_samples(test_path).digest() == test.digest()):
        save_samples(test, test_path)
    return save_samples(train, out / TRAIN_FILE), test_path


def append_to_train(new: Samples, settings: Settings) -> Samples:
    """Add ``new`` samples to ``finetune_train.npz`` and return the new training split.

    Deduplicated by id (a sample already in train is skipped; within ``new`` the first wins). Samples whose id is
    in the frozen test split are refused with a warning: the test split is never touched.
    """
    out = settings.processed_dir
    train = load_samples(out / TRAIN_FILE)
    test_ids = set(frozen_test_ids(settings) or []) | set(load_samples(out / TEST_FILE).id.tolist())
    known = set(train.id.tolist())
    keep: list[int] = []
    for i, sid in enumerate(new.id.tolist()):
        if sid in test_ids:
            log.warning("append_to_train: %s is in the frozen test split; not added", sid)
        elif sid not in known:
            known.add(sid)
            keep.append(i)
    if not keep:
        return train
    merged = Samples.concat([train, new.subset(np.array(keep, dtype=np.int64))])
    save_samples(merged, out / TRAIN_FILE)
    log.info("append_to_train: %d new samples, train now %d", len(keep), len(merged))
    return merged
