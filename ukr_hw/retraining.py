"""Continuous training from feedback: the steps of the weekly retrain flow (``flows/retrain.py`` composes them).

Retraining = take in new samples → prepare → fine-tune → gate:

1. :func:`collect` — feedback samples the lineage has not seen yet (listing only the store's days since the newest
   sample taken in, minus a day of slack, or since the oldest sample still waiting, plus the spool's late uploads
   since then; idempotent by sample id), less those an operator rejected, at most
   ``settings.retrain_max_source_share`` of them from one source (:func:`source_cap`; the rest wait for a later
   retrain, recorded in lineage so that none is missed). Broken or inconsistent ones are quarantined with the
   reason; the rest are preprocessed with THE preprocessing function into :class:`Samples`.
2. :func:`ingest` — the samples (PNG + record, with the role fixed now by a hash of the id: a share
   ``settings.user_test_fraction`` is held out as users' drawings) into the raw source ``data/raw/feedback``
   (:mod:`ukr_hw.data.feedback_raw`), idempotent by id.
3. the prepare flow — every raw source, feedback included, through the same ``preprocess`` path → the processed
   data (the frozen test split never changes; users' samples join TRAIN or ``user_test.npz`` by their role) and a
   new DVC data version. Re-running prepare from scratch rebuilds the same data, users' samples and all.
4. :func:`finetune_with_feedback` — fine-tune from the pretrained body as the first training does, score on the
   frozen test split and on the user drawings (the champion too, for comparison).
5. :func:`register` — log to MLflow (with a JSONL lineage manifest), register, promote under the usual gate,
   record lineage (samples ↔ data version ↔ model version).
6. :func:`notify_api` — ask the serving API to reload; an unreachable API is a warning, not a failure.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ukr_hw import labels
from ukr_hw.data import feedback_raw
from ukr_hw.data.arrays import Samples, load_samples
from ukr_hw.data.feedback_raw import SOURCE as FEEDBACK_SOURCE
from ukr_hw.data.feedback_raw import USER_TEST_FILE, BadSample, role_of
from ukr_hw.data.split import TEST_FILE, TRAIN_FILE
from ukr_hw.registry import lineage
from ukr_hw.settings import Settings, get_settings

log = logging.getLogger(__name__)

__all__ = ["FEEDBACK_SOURCE", "USER_TEST_FILE", "BadSample", "role_of"]  # re-exported: callers import them from here
#: listing starts this long before the newest sample taken in (clock skew, late spool uploads)
LISTING_SLACK = timedelta(days=1)


class RetrainError(RuntimeError):
    """The retrain cannot go on (no prepared data, …); the message says what to do."""


@dataclass
class Collected:
    samples: Samples
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  #: sample_id → record (+ "key")
    images: dict[str, bytes] = field(default_factory=dict)  #: sample_id → PNG, for the raw snapshot
    quarantined: list[dict[str, str]] = field(default_factory=list)  #: {"key", "reason"}
    seen: int = 0  #: new refs listed (valid + quarantined)
    rejected: int = 0  #: listed samples left out because an operator rejected them
    deferred: list[str] = field(default_factory=list)  #: valid samples over their source's share: a later retrain


# --- 1. collect ------------------------------------------------------------------------------------------------


def sample_from_record(png: bytes, record: dict[str, Any]) -> tuple[np.ndarray, int, int, np.ndarray]:
    """``(x uint8 28×28, y, case, ink (2,))`` for one stored sample; :class:`BadSample` says why not."""
    from ukr_hw.preprocess import PreprocessError, preprocess

    y, case = feedback_raw.labels_of(record)
    try:
        glyph = preprocess(png)
    except PreprocessError as exc:
        raise BadSample(f"the drawing cannot be preprocessed: {exc}") from exc
    return glyph.to_uint8(), y, case, glyph.features


def collect(store: Any, settings: Settings | None = None) -> Collected:
    """New, valid feedback samples as :class:`Samples` (source ``feedback``, id = sample id); bad ones quarantined;
    those over their source's share (:func:`source_cap`) deferred to a later retrain."""
    from ukr_hw.feedback import CorruptSample

    s = settings or get_settings()
    newest = lineage.latest_created_at(s)
    since = newest - LISTING_SLACK if newest else None
    known = lineage.ingested_ids(s)
    rejected = store.rejected_ids()  # an operator's `ukr-hw feedback reject`: kept in the store, never trained on
    waiting = lineage.deferred_samples(s)  # over their source's share last time: listed again, however old
    if gone := [sid for sid in waiting if sid in rejected]:
        lineage.forget_deferred(gone, s)
    oldest_waiting = min((_parse_time(c) for sid, c in waiting.items() if sid not in rejected and c), default=None)
    if since is not None and oldest_waiting is not None:
        since = min(since, oldest_waiting - LISTING_SLACK)
    # the days since the high-water mark, plus whatever the spool uploaded since then, drawn on whichever day: a
    # sample spooled during an outage and uploaded later than the window still comes in
    listed = {*store.list_since(since), *store.late_arrivals(since)}
    refs = sorted(
        (r for r in listed if r.sample_id not in known and r.sample_id not in rejected), key=lambda r: r.sample_id
    )
    out = Collected(
        samples=Samples.empty(), seen=len(refs), rejected=len({r.sample_id for r in listed} & set(rejected))
    )
    valid: list[tuple[str, tuple[np.ndarray, int, int, np.ndarray], dict[str, Any], bytes]] = []
    for ref in refs:
        try:
            png, record = store.read(ref)
            sample = sample_from_record(png, record)
        except CorruptSample as exc:
            reason = exc.reason
        except BadSample as exc:
            reason = str(exc)
        else:
            valid.append((ref.sample_id, sample, {**record, "key": ref.key}, png))
            continue
        store.quarantine(ref, reason)
        out.quarantined.append({"key": ref.key, "reason": reason})
        log.warning("quarantined feedback sample %s: %s", ref.key, reason)
    keep = cap_by_source([v[2].get("source") for v in valid], s.retrain_max_source_share, s.retrain_source_min_samples)
    taken = [v for v, k in zip(valid, keep, strict=True) if k]
    out.deferred = [v[0] for v, k in zip(valid, keep, strict=True) if not k]
    if out.deferred:
        by_source = Counter(str(v[2].get("source")) for v, k in zip(valid, keep, strict=True) if not k)
        log.warning(
            "%d new samples over their source's share (%.0f %% of one retrain, at least %d each) wait for a later "
            "retrain: %s",
            len(out.deferred),
            100 * s.retrain_max_source_share,
            s.retrain_source_min_samples,
            dict(by_source),
        )
        lineage.record_deferred(
            [(v[0], v[2].get("created_at"), v[2].get("source")) for v, k in zip(valid, keep, strict=True) if not k],
            s,
        )
    for sid, _, record, png in taken:
        out.records[sid] = record
        out.images[sid] = png
    if taken:
        out.samples = Samples(
            x=np.stack([v[1][0] for v in taken]).astype(np.uint8),
            y=np.asarray([v[1][1] for v in taken], dtype=np.int64),
            case=np.asarray([v[1][2] for v in taken], dtype=np.int8),
            ink=np.stack([v[1][3] for v in taken]).astype(np.float32),
            source=np.asarray([FEEDBACK_SOURCE] * len(taken)),
            id=np.asarray([v[0] for v in taken]),
        )
    return out


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def source_cap(counts: Mapping[Any, int], share: float, floor: int = 0) -> int:
    """The most new samples one source may give one retrain: the largest ``c`` with ``c ≤ share × Σ min(nᵢ, c)``
    (every source capped at ``c``, no capped source holds more than ``share`` of what is taken), but at least
    ``floor``. ``share ≥ 1`` caps nothing.

    With one source, or few, no ``c > 0`` fits a small share: the floor lets a deployment with one user learn, a
    bounded number of samples per retrain.
    """
    top = max(counts.values(), default=0)
    if share >= 1:
        return top
    c = 0
    # Σ min(nᵢ, c) grows ever more slowly with c, so the c that fit are 0..c*: count up to the first that does not
    while c < top and c + 1 <= share * sum(min(n, c + 1) for n in counts.values()) + 1e-9:
        c += 1
    return max(c, floor)


def cap_by_source(sources: Sequence[str | None], share: float, floor: int = 0) -> list[bool]:
    """Which of the new samples (oldest first; ``sources[i]`` the salted sender of sample i, None unknown, counted as
    one source) one retrain takes: each source's oldest, up to :func:`source_cap`."""
    cap = source_cap(Counter(sources), share, floor)
    seen: Counter[str | None] = Counter()
    keep = []
    for src in sources:
        seen[src] += 1
        keep.append(seen[src] <= cap)
    return keep


# --- 2. take in: the raw snapshot ------------------------------------------------------------------------------------


def ingest(collected: Collected, settings: Settings | None = None, store: Any = None) -> dict[str, int]:
    """The collected samples (PNG + record + role) into ``data/raw/feedback``; the prepare flow builds the processed
    data from there. Returns ``{"snapshotted": new ones, "backfilled": …, "in_snapshot": all}``.

    With ``store``, samples that lineage took in but the snapshot lacks (taken in before users' samples were raw
    data, when they lived only in the processed files) are read back from the store and snapshotted with the role
    they had, so that the first prepare from the snapshot loses none of them.
    """
    s = settings or get_settings()
    items = [
        (collected.images[sid], {**record, "role": role_of(sid, s.user_test_fraction)})
        for sid, record in sorted(collected.records.items())
    ]
    new = feedback_raw.snapshot(items, s)
    backfilled = _backfill(store, s) if store is not None else 0
    return {"snapshotted": new, "backfilled": backfilled, "in_snapshot": len(feedback_raw.read_records(s))}


def _backfill(store: Any, settings: Settings) -> int:
    from ukr_hw.feedback import CorruptSample

    have = {r["sample_id"] for r in feedback_raw.read_records(settings)}
    missing = {sid: v for sid, v in lineage.ingested_samples(settings).items() if sid not in have}
    if not missing:
        return 0
    rejected = store.rejected_ids()
    items = []
    for sid, (key, role) in sorted(missing.items()):
        try:
            png, record = store.read(key)
        except CorruptSample as exc:
            log.warning("feedback sample %s (taken in earlier) cannot be read back for the snapshot: %s", sid, exc)
            continue
        items.append((png, {**record, "key": key, "role": role if role in feedback_raw.ROLES else "train"}))
    new = feedback_raw.snapshot(items, settings)
    feedback_raw.sync_rejections({k: v for k, v in rejected.items() if k in missing}, settings)
    log.info("snapshotted %d feedback samples taken in before users' samples were raw data", new)
    return new


def user_test_path(settings: Settings | None = None) -> Path:
    s = settings or get_settings()
    return s.processed_dir / USER_TEST_FILE


def load_user_test(settings: Settings | None = None) -> Samples:
    path = user_test_path(settings)
    return load_samples(path) if path.exists() else Samples.empty()


def feedback_in_data(settings: Settings | None = None) -> dict[str, str]:
    """sample_id → role for every feedback sample in the current prepared data (train file + user drawings)."""
    s = settings or get_settings()
    train = load_samples(s.processed_dir / TRAIN_FILE)
    out = {
        sid: "train"
        for sid, src in zip(train.id.tolist(), train.source.tolist(), strict=True)
        if src == FEEDBACK_SOURCE
    }
    out.update({sid: "user_test" for sid in load_user_test(s).id.tolist()})
    return out


# --- 4. fine-tune ----------------------------------------------------------------------------------------------------


def finetune_with_feedback(
    config_path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Fine-tune as the first training does, on the prepared data that now holds users' drawings; returns net,
    report (frozen test), user reports (new and champion), config and the per-epoch metrics (``history``, for
    :func:`register`).

    The new model starts from the MNIST-pretrained body (cached, the one the champion was fine-tuned from), not
    from the champion's weights: on real writers that reads other writers of the users' population 5 points better
    after 1,000 of their drawings, where a retrain from the champion, anchored to it, gained 2 to 3
    (``benchmarks/retrain_recipe.py``; docs/experiments.md, "Retraining from the pretrained body"). The config's
    ``retrain`` keys replace its ``finetune`` keys. The champion is scored on the same glyphs for the gate.
    """
    from ukr_hw import registry, training
    from ukr_hw.model.evaluate import evaluate

    s = settings or get_settings()
    path = s.path(config_path or s.retrain_config)
    if config_path is None and not path.exists():
        log.warning("retrain config %s not found; using the training defaults", path)
        path = None
    config = training.load_config(path, overrides)
    config["finetune"] = training.deep_merge(config["finetune"], config["retrain"])
    try:
        champion = registry.load_champion_net(s)
        champion_version = registry.champion_version(s)
    except Exception as exc:  # no registry / no champion yet: nothing to compare with, say so
        log.warning("no champion to compare with (%s)", exc)
        champion, champion_version = None, None
    body, _ = training.pretrain(config, s)
    make_logger, history = registry.history_factory()  # per-epoch metrics, logged when register() starts the run
    net, report = training.finetune(config, s, init=body, make_logger=make_logger)
    user = load_user_test(s)
    user_report = evaluate(net, user) if len(user) else None
    champion_user = evaluate(champion, user) if len(user) and champion is not None else None
    champion_test = None
    if champion is not None:
        champion_test = evaluate(champion, load_samples(s.processed_dir / TEST_FILE))
    return {
        "net": net,
        "report": report,
        "user_report": user_report,
        "champion_user_report": champion_user,
        "champion_test_report": champion_test,
        "champion_version": champion_version,
        "config": config,
        "history": history,
    }


# --- 5. register + lineage -------------------------------------------------------------------------------------------


def register(
    trained: dict[str, Any],
    data_version: str,
    collected: Collected,
    roles: dict[str, str],
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Log the retrain run (metrics, user-drawings eval, lineage manifest), register + gate, record lineage."""
    import mlflow

    from ukr_hw import registry, training

    s = settings or get_settings()
    report, user_report = trained["report"], trained["user_report"]
    new_ids = collected.samples.id.tolist()
    from ukr_hw.data.versioning import raw_version

    # with the data version (processed), the raw one it was built from: users' snapshot, images and all
    tags = {"trigger": "feedback", "feedback_new_samples": len(new_ids), "raw_data_version": raw_version(s) or "none"}
    with registry.start_run("retrain", data_version=data_version, tags=tags, settings=s) as run:
        registry.log_history(trained.get("history") or [])
        registry.log_eval(report, "test")
        if user_report is not None:
            registry.log_eval(user_report, "user")
        for name in ("champion_user_report", "champion_test_report"):
            if trained.get(name) is not None:
                prefix = name.removesuffix("_report")
                mlflow.log_metrics(
                    {f"{prefix}_{k}": float(v) for k, v in trained[name].metrics.items() if np.isfinite(v)}
                )
        mlflow.log_metrics(
            {
                "feedback_new_samples": len(new_ids),
                "feedback_quarantined": len(collected.quarantined),
                "feedback_train_total": sum(r == "train" for r in roles.values()),
                "feedback_user_test_total": sum(r == "user_test" for r in roles.values()),
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / f"feedback_samples-{data_version}.jsonl"
            with manifest.open("w") as fh:
                for sid, role in sorted(roles.items()):
                    rec = collected.records.get(sid, {})
                    row = {
                        "sample_id": sid,
                        "role": role,
                        "data_version": data_version,
                        "new": sid in collected.records,
                        "raw": f"{feedback_raw.FOLDER}/{sid}.png",  # under data/raw, at raw_data_version
                    }
                    row.update({k: rec[k] for k in ("key", "symbol", "is_uppercase", "created_at") if k in rec})
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            mlflow.log_artifact(str(manifest), "lineage")
        params = training.flat_params(trained["config"])
        params["init_champion_version"] = trained.get("champion_version") or "none"
        champion_user = trained.get("champion_user_report")
        reg = registry.log_model_and_register(
            trained["net"],
            report=report,
            data_version=data_version,
            params=params,
            settings=s,
            rejection_note=lambda version: _users_hint(version, user_report, champion_user),
            users=(user_report, champion_user) if user_report and champion_user else None,
            champion_scored=(trained["champion_version"], trained["champion_test_report"])
            if trained.get("champion_test_report") is not None
            else None,
        )
        client = mlflow.MlflowClient(tracking_uri=s.resolved_tracking_uri(), registry_uri=s.resolved_tracking_uri())
        client.set_model_version_tag(s.model_name, reg.version, "feedback_samples", str(len(roles)))
        client.set_model_version_tag(s.model_name, reg.version, "retrain_run_id", run.info.run_id)
    lineage.record_samples(
        [
            lineage.IngestedSample(
                sample_id=sid,
                key=rec["key"],
                symbol=labels.normalize_symbol(rec["symbol"]),
                is_uppercase=rec.get("is_uppercase"),
                role=roles.get(sid, role_of(sid, s.user_test_fraction)),
                created_at=rec.get("created_at"),
            )
            for sid, rec in collected.records.items()
        ],
        s,
    )
    lineage.record_data_version(data_version, roles, s)
    lineage.record_model_version(reg.version, data_version, reg.run_id, reg.promoted, reg.reason, s)
    return {"model_version": reg.version, "run_id": reg.run_id, "promoted": reg.promoted, "reason": reg.reason}


def _users_hint(version: str, new: Any, champion: Any) -> str:
    """For a rejected version: how it and the champion read users' held-out drawings, and, where it reads them
    better, the command that serves it anyway. Empty without such drawings."""
    if new is None or champion is None:
        return ""
    ours, theirs = new.metrics.get("symbol_accuracy"), champion.metrics.get("symbol_accuracy")
    if ours is None or theirs is None or not (np.isfinite(ours) and np.isfinite(theirs)):
        return ""
    hint = f"; on users' held-out drawings it reads {ours:.2f} against the champion's {theirs:.2f}"
    if ours > theirs:
        hint += f": `ukr-hw promote {version} --reason …` serves it anyway"
    return hint


# --- 6. tell the API -------------------------------------------------------------------------------------------------


def notify_api(settings: Settings | None = None) -> dict[str, Any]:
    """``POST /admin/reload`` on the serving API; failures become a warning in the result, never an exception."""
    from ukr_hw.api_client import ApiClient

    s = settings or get_settings()
    token = s.resolved_admin_token()
    try:
        with ApiClient(s.api_url) as client:
            answer = client.reload(token)
        return {"reloaded": True, "api": s.api_url, "answer": answer}
    except Exception as exc:  # unreachable, refused token, …: the new model is registered either way
        log.warning("could not tell the API at %s to reload: %s", s.api_url, exc)
        return {"reloaded": False, "api": s.api_url, "warning": str(exc)}
