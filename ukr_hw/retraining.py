"""Continuous training from feedback: the steps of the weekly retrain flow (``flows/retrain.py`` composes them).

1. :func:`collect` — feedback samples the lineage has not seen yet (listing only the store's days since the newest
   sample taken in, minus a day of slack, plus the spool's late uploads since then; idempotent by sample id), less
   those an operator rejected. Broken or inconsistent ones are quarantined with the reason; the rest are
   preprocessed with THE preprocessing function into :class:`Samples`.
2. :func:`split_roles` — a fixed share (``settings.user_test_fraction``, by sample-id hash, so a sample's role
   never changes) is held out as the growing "user drawings" test set; the rest joins TRAIN only.
3. :func:`add_to_data` — append to ``finetune_train.npz`` (the frozen test split never changes) and to
   ``user_test.npz``; both dedupe by id, so a re-run after a crash adds nothing twice.
4. ``versioning.version_data`` — a new DVC data version (pushed).
5. :func:`finetune_from_champion` — fine-tune starting from the champion's weights, score on the frozen test split
   and on the user drawings (the champion too, for comparison).
6. :func:`register` — log to MLflow (with a JSONL lineage manifest), register, promote under the usual gate,
   record lineage (samples ↔ data version ↔ model version).
7. :func:`notify_api` — ask the serving API to reload; an unreachable API is a warning, not a failure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ukr_hw import labels, lineage
from ukr_hw.data.arrays import Samples, load_samples, save_samples
from ukr_hw.data.split import TEST_FILE, TRAIN_FILE
from ukr_hw.settings import Settings, get_settings

log = logging.getLogger(__name__)

FEEDBACK_SOURCE = "feedback"
USER_TEST_FILE = "user_test.npz"
#: listing starts this long before the newest sample taken in (clock skew, late spool uploads)
LISTING_SLACK = timedelta(days=1)


class RetrainError(RuntimeError):
    """The retrain cannot go on (no prepared data, …); the message says what to do."""


@dataclass
class Collected:
    samples: Samples
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  #: sample_id → record (+ "key")
    quarantined: list[dict[str, str]] = field(default_factory=list)  #: {"key", "reason"}
    seen: int = 0  #: new refs listed (valid + quarantined)
    rejected: int = 0  #: listed samples left out because an operator rejected them


class BadSample(ValueError):
    """A stored sample that cannot be trained on; the message is the quarantine reason."""


# --- 1. collect ------------------------------------------------------------------------------------------------


def sample_from_record(png: bytes, record: dict[str, Any]) -> tuple[np.ndarray, int, int, np.ndarray]:
    """``(x uint8 28×28, y, case, ink (2,))`` for one stored sample; :class:`BadSample` says why not."""
    from ukr_hw.preprocess import PreprocessError, preprocess

    try:
        symbol = labels.normalize_symbol(record.get("symbol"))
    except (labels.UnknownSymbolError, TypeError, AttributeError) as exc:
        raise BadSample(f"unknown symbol {record.get('symbol')!r}: {exc}") from exc
    upper = record.get("is_uppercase")
    if labels.is_digit(symbol):
        if upper is not None:
            raise BadSample(f"digit {symbol!r} recorded with is_uppercase={upper!r}; digits have no case")
    elif not isinstance(upper, bool):
        raise BadSample(f"letter {symbol!r} recorded without a case (is_uppercase={upper!r})")
    try:
        glyph = preprocess(png)
    except PreprocessError as exc:
        raise BadSample(f"the drawing cannot be preprocessed: {exc}") from exc
    return glyph.to_uint8(), labels.index_of(symbol), labels.case_target(symbol, upper), glyph.features


def collect(store: Any, settings: Settings | None = None) -> Collected:
    """New, valid feedback samples as :class:`Samples` (source ``feedback``, id = sample id); bad ones quarantined."""
    from ukr_hw.feedback import CorruptSample

    s = settings or get_settings()
    newest = lineage.latest_created_at(s)
    since = newest - LISTING_SLACK if newest else None
    known = lineage.ingested_ids(s)
    rejected = store.rejected_ids()  # an operator's `ukr-hw feedback reject`: kept in the store, never trained on
    # the days since the high-water mark, plus whatever the spool uploaded since then, drawn on whichever day: a
    # sample spooled during an outage and uploaded later than the window still comes in
    listed = {*store.list_since(since), *store.late_arrivals(since)}
    refs = sorted(
        (r for r in listed if r.sample_id not in known and r.sample_id not in rejected), key=lambda r: r.sample_id
    )
    xs, ys, cases, inks, ids = [], [], [], [], []
    out = Collected(
        samples=Samples.empty(), seen=len(refs), rejected=len({r.sample_id for r in listed} & set(rejected))
    )
    for ref in refs:
        try:
            png, record = store.read(ref)
            x, y, case, ink = sample_from_record(png, record)
        except CorruptSample as exc:
            reason = exc.reason
        except BadSample as exc:
            reason = str(exc)
        else:
            xs.append(x)
            ys.append(y)
            cases.append(case)
            inks.append(ink)
            ids.append(ref.sample_id)
            out.records[ref.sample_id] = {**record, "key": ref.key}
            continue
        store.quarantine(ref, reason)
        out.quarantined.append({"key": ref.key, "reason": reason})
        log.warning("quarantined feedback sample %s: %s", ref.key, reason)
    if ids:
        out.samples = Samples(
            x=np.stack(xs).astype(np.uint8),
            y=np.asarray(ys, dtype=np.int64),
            case=np.asarray(cases, dtype=np.int8),
            ink=np.stack(inks).astype(np.float32),
            source=np.asarray([FEEDBACK_SOURCE] * len(ids)),
            id=np.asarray(ids),
        )
    return out


# --- 2./3. roles and data ------------------------------------------------------------------------------------------


def role_of(sample_id: str, fraction: float) -> str:
    """``user_test`` for a fixed ``fraction`` of ids (by SHA-256 of the id), else ``train``: stable forever."""
    h = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") / 2**64
    return "user_test" if h < fraction else "train"


def split_roles(samples: Samples, settings: Settings | None = None) -> tuple[Samples, Samples]:
    """``(train part, user-test part)`` of the new samples."""
    s = settings or get_settings()
    mask = np.array([role_of(i, s.user_test_fraction) == "user_test" for i in samples.id.tolist()], dtype=bool)
    return samples.subset(np.flatnonzero(~mask)), samples.subset(np.flatnonzero(mask))


def user_test_path(settings: Settings | None = None) -> Path:
    s = settings or get_settings()
    return s.processed_dir / USER_TEST_FILE


def load_user_test(settings: Settings | None = None) -> Samples:
    path = user_test_path(settings)
    return load_samples(path) if path.exists() else Samples.empty()


def append_user_test(new: Samples, settings: Settings | None = None) -> Samples:
    """Add ``new`` to ``user_test.npz`` (dedup by id); returns the whole user-drawings set."""
    current = load_user_test(settings)
    known = set(current.id.tolist())
    keep = [i for i, sid in enumerate(new.id.tolist()) if sid not in known]
    if not keep:
        return current
    part = new.subset(np.asarray(keep, dtype=np.int64))
    merged = Samples.concat([current, part]) if len(current) else part
    save_samples(merged, user_test_path(settings))
    return merged


def add_to_data(train_part: Samples, test_part: Samples, settings: Settings | None = None) -> dict[str, int]:
    """Append to TRAIN (``split.append_to_train``) and to the user-drawings set; returns the new sizes."""
    from ukr_hw.data.split import append_to_train

    s = settings or get_settings()
    if not (s.processed_dir / TRAIN_FILE).exists():
        raise RetrainError(f"no prepared data in {s.processed_dir}: run `ukr-hw prepare` first")
    train = append_to_train(train_part, s) if len(train_part) else load_samples(s.processed_dir / TRAIN_FILE)
    user = append_user_test(test_part, s) if len(test_part) else load_user_test(s)
    return {"train": len(train), "user_test": len(user)}


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


# --- 5. fine-tune ----------------------------------------------------------------------------------------------------


def finetune_from_champion(
    config_path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Fine-tune from the champion; returns net, report (frozen test), user reports (new and champion), config and
    the per-epoch metrics (``history``, for :func:`register`).

    The config's ``retrain`` keys replace its ``finetune`` keys when a champion exists: the retrain starts from the
    champion's weights, anchored to the champion (``finetune.anchor_weight``), so that it learns users' drawings and
    breaks few of the champion's answers; with ``finetune.average_with_init`` set (off by default: measured, not
    adopted) it also ends averaged with the champion's weights.
    """
    from ukr_hw import tracking, training
    from ukr_hw.model.evaluate import evaluate

    s = settings or get_settings()
    path = s.path(config_path or s.retrain_config)
    if config_path is None and not path.exists():
        log.warning("retrain config %s not found; using the training defaults", path)
        path = None
    config = training.load_config(path, overrides)
    try:
        champion = tracking.load_champion_net(s)
        champion_version = tracking.champion_version(s)
    except Exception as exc:  # no registry / no champion yet: start from scratch, say so
        log.warning("no champion to start from (%s); fine-tuning from fresh weights", exc)
        champion, champion_version = None, None
    if champion is not None:  # the champion's architecture wins: its weights must fit
        config["net"] = {**config["net"], **dataclasses.asdict(champion.config)}
        # and a gentler schedule keeps the new model near the champion while it learns the new samples
        config["finetune"] = training.deep_merge(config["finetune"], config["retrain"])
    make_logger, history = tracking.history_factory()  # per-epoch metrics, logged when register() starts the run
    net, report = training.finetune(config, s, init=champion, make_logger=make_logger)
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


# --- 6. register + lineage -------------------------------------------------------------------------------------------


def register(
    trained: dict[str, Any],
    data_version: str,
    collected: Collected,
    roles: dict[str, str],
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Log the retrain run (metrics, user-drawings eval, lineage manifest), register + gate, record lineage."""
    import mlflow

    from ukr_hw import tracking, training

    s = settings or get_settings()
    report, user_report = trained["report"], trained["user_report"]
    new_ids = collected.samples.id.tolist()
    tags = {"trigger": "feedback", "feedback_new_samples": len(new_ids)}
    with tracking.start_run("retrain", data_version=data_version, tags=tags, settings=s) as run:
        tracking.log_history(trained.get("history") or [])
        tracking.log_eval(report, "test")
        if user_report is not None:
            tracking.log_eval(user_report, "user")
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
                    }
                    row.update({k: rec[k] for k in ("key", "symbol", "is_uppercase", "created_at") if k in rec})
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            mlflow.log_artifact(str(manifest), "lineage")
        params = training.flat_params(trained["config"])
        params["init_champion_version"] = trained.get("champion_version") or "none"
        champion_user = trained.get("champion_user_report")
        reg = tracking.log_model_and_register(
            trained["net"],
            report=report,
            data_version=data_version,
            params=params,
            settings=s,
            rejection_note=lambda version: _users_hint(version, user_report, champion_user),
            users=(user_report.metrics, champion_user.metrics) if user_report and champion_user else None,
            champion_scored=(trained["champion_version"], trained["champion_test_report"].metrics)
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


# --- 7. tell the API -------------------------------------------------------------------------------------------------


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
