"""Users' confirmed drawings as a raw data source: ``data/raw/feedback``, versioned by DVC with the rest of data/raw.

Layout::

    raw_dir/feedback/<sample_id>.png    the drawing exactly as the feedback store holds it (sha256 in its record)
    raw_dir/feedback/records.jsonl      one line per sample, sorted by id: the store's record + ``key`` + ``role``
    raw_dir/feedback/rejected.json      ``{sample_id: reason}``: snapshotted samples an operator rejected since

The retrain flow's take-in writes it (:func:`snapshot`; idempotent by id, a sample already there stays as it is), the
prepare flow reads it (:func:`prep`) through the same ``preprocess`` path as every other source, so re-running
prepare (a preprocessing version bump, ``ukr-hw pipeline``) rebuilds the users' samples too.

A sample's role (``train`` or ``user_test``, by a hash of its id) is decided once, at take-in, and kept in its
record: a later change of ``user_test_fraction`` or a re-run of prepare never moves a held-out drawing into training.
A rejected sample keeps its image and record; prepare leaves it out of both sets. Rejections reach the snapshot by
:func:`sync_from_store`, which every prepare runs (best effort: without the store the snapshot's own markers hold).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ukr_hw import labels
from ukr_hw import preprocess as preprocess_module
from ukr_hw.data import stamps
from ukr_hw.data.arrays import Samples, save_samples
from ukr_hw.data.parallel import chunks, pool_map, preprocess_files
from ukr_hw.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "feedback"  #: the ``source`` column of users' samples in the prepared arrays
FOLDER = "feedback"
RECORDS_FILE = "records.jsonl"
REJECTED_FILE = "rejected.json"
USER_TEST_FILE = "user_test.npz"  #: users' held-out drawings, in ``processed_dir``
TRAIN_CACHE = "feedback_train.npz"
USER_TEST_CACHE = "feedback_user_test.npz"
ROLES = ("train", "user_test")


class SnapshotError(RuntimeError):
    """The feedback snapshot is damaged (a missing or altered image, a broken line); the message says how to fix it."""


class BadSample(ValueError):
    """A sample that cannot be trained on; the message is the reason (the quarantine reason at take-in)."""


def feedback_dir(settings: Settings) -> Path:
    return settings.raw_dir / FOLDER


def role_of(sample_id: str, fraction: float) -> str:
    """``user_test`` for a fixed ``fraction`` of ids (by SHA-256 of the id), else ``train``: stable forever."""
    h = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2**64
    return "user_test" if h < fraction else "train"


def labels_of(record: Mapping[str, Any]) -> tuple[int, int]:
    """``(class index, case target)`` of a feedback record; :class:`BadSample` says what is wrong with its label.

    A letter whose writer did not say its case (``case_known`` false, ``is_uppercase`` null) gets
    ``labels.CASE_UNKNOWN``: it trains the symbol head only."""
    try:
        symbol = labels.normalize_symbol(record.get("symbol"))
    except (labels.UnknownSymbolError, TypeError, AttributeError) as exc:
        raise BadSample(f"unknown symbol {record.get('symbol')!r}: {exc}") from exc
    upper = record.get("is_uppercase")
    if labels.is_digit(symbol):
        if upper is not None:
            raise BadSample(f"digit {symbol!r} recorded with is_uppercase={upper!r}; digits have no case")
    elif upper is None and record.get("case_known") is False:
        return labels.index_of(symbol), labels.CASE_UNKNOWN
    elif not isinstance(upper, bool):
        raise BadSample(f"letter {symbol!r} recorded without a case (is_uppercase={upper!r})")
    return labels.index_of(symbol), labels.case_target(symbol, upper)


# --- reading and writing the snapshot --------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_records(settings: Settings) -> list[dict[str, Any]]:
    """The snapshot's records, sorted by id (empty when there is no snapshot)."""
    path = feedback_dir(settings) / RECORDS_FILE
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("sample_id"), str):
                raise ValueError("not a record with a sample_id")
        except ValueError as exc:
            raise SnapshotError(
                f"{path} line {n} is not a feedback record ({exc}); restore the file with `dvc checkout data/raw.dvc`"
                " (or `dvc pull`) rather than editing it."
            ) from exc
        out.append(record)
    return sorted(out, key=lambda r: r["sample_id"])


def read_rejected(settings: Settings) -> dict[str, str]:
    """``{sample_id: reason}`` of the snapshotted samples that are rejected."""
    path = feedback_dir(settings) / REJECTED_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SnapshotError(f"{path} is not valid JSON ({exc}); restore it with `dvc checkout data/raw.dvc`.") from exc
    return {str(k): str(v) for k, v in data.items()}


def _write_records(records: Iterable[Mapping[str, Any]], settings: Settings) -> None:
    lines = [
        json.dumps(dict(r), ensure_ascii=False, sort_keys=True) for r in sorted(records, key=lambda r: r["sample_id"])
    ]
    _write_atomic(feedback_dir(settings) / RECORDS_FILE, "".join(f"{line}\n" for line in lines))


def snapshot(items: Iterable[tuple[bytes, Mapping[str, Any]]], settings: Settings) -> int:
    """Add ``(png, record)`` pairs to the snapshot (image first, record last); returns how many were new.

    Each record needs ``sample_id``, ``image_sha256`` (checked against the image) and ``role``. A sample already in
    the snapshot is kept as it is, so a take-in repeated after a crash changes nothing.
    """
    folder = feedback_dir(settings)
    records = {r["sample_id"]: r for r in read_records(settings)}
    new = 0
    for png, record in items:
        sid = record["sample_id"]
        if sid in records:
            continue
        if record.get("role") not in ROLES:
            raise ValueError(f"feedback sample {sid}: role {record.get('role')!r} is not one of {ROLES}")
        if hashlib.sha256(png).hexdigest() != record.get("image_sha256"):
            raise ValueError(f"feedback sample {sid}: the image does not match its record's image_sha256")
        path = folder / f"{sid}.png"
        if not (path.exists() and path.read_bytes() == png):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(png)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        records[sid] = dict(record)
        new += 1
    if new:
        _write_records(records.values(), settings)  # the commit marker: an image without a record is not in the data
    return new


def sync_rejections(
    rejected: Mapping[str, str],
    settings: Settings,
    still_in_store: Callable[[Mapping[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Bring the store's rejections (``{sample_id: reason}``) into the snapshot.

    A snapshotted sample the store rejects is marked (with the reason). A mark is taken back only when
    ``still_in_store(record)`` says that the store holds the sample and it is not rejected there any more (an operator's
    un-reject): a prepare run against another store, or none, never revives a rejected sample.
    Returns ``{"rejected": n marked, "added": [ids], "restored": [ids]}``.
    """
    records = {r["sample_id"]: r for r in read_records(settings)}
    current = read_rejected(settings)
    marks = dict(current)
    added = sorted(sid for sid in rejected if sid in records and current.get(sid) != rejected[sid])
    for sid in added:
        marks[sid] = rejected[sid]
    restored = []
    if still_in_store is not None:
        restored = sorted(
            sid for sid in current if sid not in rejected and sid in records and still_in_store(records[sid])
        )
        for sid in restored:
            marks.pop(sid)
    if marks != current:
        path = feedback_dir(settings) / REJECTED_FILE
        _write_atomic(path, json.dumps(dict(sorted(marks.items())), ensure_ascii=False, indent=1) + "\n")
        for sid in added:
            log.info(
                "feedback sample %s rejected since its snapshot (%s): left out of the prepared data", sid, marks[sid]
            )
        for sid in restored:
            log.info("feedback sample %s is no longer rejected: back in the prepared data", sid)
    return {"rejected": len(marks), "added": added, "restored": restored}


def sync_from_store(settings: Settings) -> dict[str, Any] | None:
    """:func:`sync_rejections` against the configured feedback store; None (and a warning) when the store cannot be
    read now (the snapshot's marks hold; the next prepare tries again) or when there is no snapshot."""
    if not read_records(settings):
        return None  # nothing to sync: prepare never touches the store on a project without users' samples
    from ukr_hw.feedback import FeedbackStore, SampleRef, StoreUnavailable

    try:
        store = FeedbackStore.from_settings(settings)
        rejected = store.rejected_ids()

        def still_in_store(record: Mapping[str, Any]) -> bool:
            return bool(record.get("key")) and store.backend.exists(SampleRef(str(record["key"])).json_key)

        return sync_rejections(rejected, settings, still_in_store)
    except (StoreUnavailable, OSError) as exc:
        log.warning(
            "could not read the rejections from the feedback store %s (%s); the snapshot's own marks are used",
            settings.feedback_uri,
            exc,
        )
        return None


# --- prepare: the snapshot through the one preprocess path ------------------------------------------------------


def _empty_info(settings: Settings, rejected: int = 0) -> dict[str, Any]:
    cache = settings.processed_dir / ".cache"
    return {
        "path_train": str(cache / TRAIN_CACHE),
        "path_user_test": str(cache / USER_TEST_CACHE),
        "train": 0,
        "user_test": 0,
        "rejected": rejected,
        "bad": 0,
        "case_masked": 0,  #: letters whose ink fills their frame (crops): their case label is not trained on
    }


def prep(settings: Settings) -> dict[str, Any]:
    """The snapshot, less rejected samples, → ``.cache/feedback_train.npz`` and ``.cache/feedback_user_test.npz``
    (by each record's role). Skipped when the records, the rejections, the images and the code are unchanged."""
    cache = settings.processed_dir / ".cache"
    info = _empty_info(settings)
    outs = [Path(info["path_train"]), Path(info["path_user_test"])]
    sync_from_store(settings)
    records = read_records(settings)
    rejected = read_rejected(settings)
    folder = feedback_dir(settings)
    pngs = [folder / f"{r['sample_id']}.png" for r in records]
    missing = [p for p in pngs if not p.exists()]
    if missing:
        raise SnapshotError(
            f"{len(missing)} image(s) of the feedback snapshot are missing (e.g. {missing[0]}); restore data/raw with "
            "`dvc pull data/raw.dvc` (or `dvc checkout`)."
        )
    key = stamps.digest(
        [[r["sample_id"], r.get("symbol"), r.get("is_uppercase"), r.get("case_known"), r.get("role")] for r in records],
        sorted(rejected),
        stamps.files_digest(pngs),
        preprocess_module,
        sys.modules[__name__],
        labels,
    )
    if stamps.is_fresh(cache, "feedback", key, outs):
        return stamps.read_stamp(cache, "feedback")["info"]
    keep = [r for r in records if r["sample_id"] not in rejected]
    for r in keep:
        png = folder / f"{r['sample_id']}.png"
        if hashlib.sha256(png.read_bytes()).hexdigest() != r.get("image_sha256"):
            raise SnapshotError(
                f"{png} does not match its record's image_sha256 (altered or damaged); restore it with "
                "`dvc checkout data/raw.dvc`."
            )
    results = [
        res
        for part in pool_map(
            preprocess_files, chunks([str(folder / f"{r['sample_id']}.png") for r in keep], 256), settings.prep_workers
        )
        for res in part
    ]
    rows: dict[str, list[tuple[Any, ...]]] = {role: [] for role in ROLES}
    bad = no_size_cue = 0
    for record, res in zip(keep, results, strict=True):
        sid = record["sample_id"]
        try:
            if isinstance(res, str):
                raise BadSample(f"the drawing cannot be preprocessed: {res}")
            y, case = labels_of(record)
            if case >= 0 and not preprocess_module.has_size_cue(res[1]):
                # a crop shows the letter's shape, not its size: its case label would teach the case head noise
                # (benchmarks/case_crops.py), so it trains the symbol head only
                case = labels.CASE_UNKNOWN
                no_size_cue += 1
        except BadSample as exc:
            bad += 1
            log.warning("feedback sample %s left out of the prepared data: %s", sid, exc)
            continue
        role = record.get("role") if record.get("role") in ROLES else role_of(sid, settings.user_test_fraction)
        rows[role].append((res[0], y, case, res[1], sid))
    for role, out in zip(ROLES, outs, strict=True):
        save_samples(_samples(rows[role]), out)
    info.update(
        train=len(rows["train"]),
        user_test=len(rows["user_test"]),
        rejected=len(rejected),
        bad=bad,
        case_masked=no_size_cue,
    )
    stamps.write_stamp(cache, "feedback", key, info=info)
    return info


def _samples(rows: list[tuple[Any, ...]]) -> Samples:
    if not rows:
        return Samples.empty()
    xs, ys, cases, inks, ids = zip(*rows, strict=True)
    return Samples(
        x=np.stack(xs),
        y=list(ys),
        case=list(cases),
        ink=np.stack(inks),
        source=[SOURCE] * len(rows),
        id=list(ids),
    )
