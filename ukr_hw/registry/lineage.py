"""Lineage: which feedback samples went into which data version, and which model version was trained on it.

Four tables in the database of ``settings.lineage_db`` (SQLite file by default, PostgreSQL in the stack), named
``lineage_*`` so they can share a database with MLflow (which has a ``model_versions`` table of its own):

* ``lineage_feedback_samples`` — every feedback sample the retrain flow has taken in: id, store key, label, role
  (``train`` or ``user_test``), the data version it first joined, when. The primary key makes ingestion
  idempotent: a re-run after a crash never takes a sample twice.
* ``lineage_data_version_samples`` — (data_version, sample_id): the feedback samples present in each data version.
* ``lineage_model_versions`` — (model_version, data_version, run_id, promoted, reason): the data a model was trained on.
* ``lineage_deferred_samples`` — valid samples a retrain left for a later one (over their source's share): the next
  listing reaches back to the oldest of them, so a deferred sample is never missed; a row goes once it is taken in.

Samples taken in are also snapshotted into ``data/raw/feedback`` (:mod:`ukr_hw.data.feedback_raw`); a data version
is built from that snapshot, and each model's run tags the raw version (``raw_data_version``) it came from.

Queries: :func:`samples_for_model_version`, :func:`model_versions_for_sample`, :func:`ingested_ids`,
:func:`deferred_samples`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import sqlalchemy as sa

from ukr_hw.settings import Settings, get_settings

metadata = sa.MetaData()

feedback_samples = sa.Table(
    "lineage_feedback_samples",
    metadata,
    sa.Column("sample_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("symbol", sa.String(8), nullable=False),
    sa.Column("is_uppercase", sa.Boolean, nullable=True),
    sa.Column("role", sa.String(16), nullable=False),  # train | user_test
    sa.Column("created_at", sa.String(40), nullable=True),
    sa.Column("data_version", sa.String(64), nullable=True),  # first data version holding it
    sa.Column("ingested_at", sa.String(40), nullable=False),
)

data_version_samples = sa.Table(
    "lineage_data_version_samples",
    metadata,
    sa.Column("data_version", sa.String(64), primary_key=True),
    sa.Column("sample_id", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
)

model_versions = sa.Table(
    "lineage_model_versions",
    metadata,
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("data_version", sa.String(64), nullable=True),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("promoted", sa.Boolean, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("registered_at", sa.String(40), nullable=False),
)


deferred_samples_table = sa.Table(
    "lineage_deferred_samples",
    metadata,
    sa.Column("sample_id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.String(40), nullable=True),
    sa.Column("source", sa.String(64), nullable=True),
    sa.Column("deferred_at", sa.String(40), nullable=False),
)


@dataclass(frozen=True)
class IngestedSample:
    sample_id: str
    key: str
    symbol: str
    is_uppercase: bool | None
    role: str
    created_at: str | None = None


@cache
def _engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    metadata.create_all(engine)
    return engine


def engine(settings: Settings | None = None) -> sa.Engine:
    """The lineage database (tables created on first use)."""
    s = settings or get_settings()
    return _engine(s.resolved_lineage_db())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def ingested_ids(settings: Settings | None = None) -> set[str]:
    """Ids of every feedback sample already taken in."""
    with engine(settings).connect() as conn:
        return {r[0] for r in conn.execute(sa.select(feedback_samples.c.sample_id))}


def ingested_samples(settings: Settings | None = None) -> dict[str, tuple[str, str]]:
    """``{sample_id: (store key, role)}`` of every feedback sample already taken in."""
    q = sa.select(feedback_samples.c.sample_id, feedback_samples.c.key, feedback_samples.c.role)
    with engine(settings).connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(q)}


def latest_created_at(settings: Settings | None = None) -> datetime | None:
    """Creation time of the newest sample taken in (the watermark for listing the store), or None."""
    with engine(settings).connect() as conn:
        value = conn.execute(sa.select(sa.func.max(feedback_samples.c.created_at))).scalar()
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def record_samples(samples: Iterable[IngestedSample], settings: Settings | None = None) -> int:
    """Insert samples not yet recorded (idempotent by id); returns how many were new."""
    rows = [
        {
            "sample_id": s.sample_id,
            "key": s.key,
            "symbol": s.symbol,
            "is_uppercase": s.is_uppercase,
            "role": s.role,
            "created_at": s.created_at,
            "data_version": None,
            "ingested_at": _now(),
        }
        for s in samples
    ]
    if not rows:
        return 0
    with engine(settings).begin() as conn:
        known = {
            r[0]
            for r in conn.execute(
                sa.select(feedback_samples.c.sample_id).where(
                    feedback_samples.c.sample_id.in_([r["sample_id"] for r in rows])
                )
            )
        }
        new = [r for r in rows if r["sample_id"] not in known]
        if new:
            conn.execute(feedback_samples.insert(), new)
        conn.execute(
            deferred_samples_table.delete().where(
                deferred_samples_table.c.sample_id.in_([r["sample_id"] for r in rows])
            )
        )
    return len(new)


def record_deferred(rows: Iterable[tuple[str, str | None, str | None]], settings: Settings | None = None) -> int:
    """Remember ``(sample_id, created_at, source)`` of samples left for a later retrain; returns how many were new."""
    rows = list(rows)
    if not rows:
        return 0
    with engine(settings).begin() as conn:
        have = {
            r[0]
            for r in conn.execute(
                sa.select(deferred_samples_table.c.sample_id).where(
                    deferred_samples_table.c.sample_id.in_([r[0] for r in rows])
                )
            )
        }
        new = [
            {"sample_id": sid, "created_at": created, "source": source, "deferred_at": _now()}
            for sid, created, source in rows
            if sid not in have
        ]
        if new:
            conn.execute(deferred_samples_table.insert(), new)
    return len(new)


def deferred_samples(settings: Settings | None = None) -> dict[str, str | None]:
    """``{sample_id: created_at}`` of deferred samples not taken in yet."""
    q = sa.select(deferred_samples_table.c.sample_id, deferred_samples_table.c.created_at).where(
        deferred_samples_table.c.sample_id.not_in(sa.select(feedback_samples.c.sample_id))
    )
    with engine(settings).connect() as conn:
        return {r[0]: r[1] for r in conn.execute(q)}


def forget_deferred(sample_ids: Iterable[str], settings: Settings | None = None) -> None:
    """Drop deferral rows (of samples an operator rejected since: they will never be taken in)."""
    ids = list(sample_ids)
    if ids:
        with engine(settings).begin() as conn:
            conn.execute(deferred_samples_table.delete().where(deferred_samples_table.c.sample_id.in_(ids)))


def record_data_version(data_version: str, sample_roles: dict[str, str], settings: Settings | None = None) -> None:
    """Record the feedback samples (id → role) present in ``data_version``; fills each sample's first version."""
    with engine(settings).begin() as conn:
        have = {
            r[0]
            for r in conn.execute(
                sa.select(data_version_samples.c.sample_id).where(data_version_samples.c.data_version == data_version)
            )
        }
        rows = [
            {"data_version": data_version, "sample_id": sid, "role": role}
            for sid, role in sample_roles.items()
            if sid not in have
        ]
        if rows:
            conn.execute(data_version_samples.insert(), rows)
        if sample_roles:
            conn.execute(
                feedback_samples.update()
                .where(feedback_samples.c.sample_id.in_(list(sample_roles)), feedback_samples.c.data_version.is_(None))
                .values(data_version=data_version)
            )


def record_model_version(
    model_version: str,
    data_version: str | None,
    run_id: str | None = None,
    promoted: bool | None = None,
    reason: str | None = None,
    settings: Settings | None = None,
) -> None:
    """Record (or update) that ``model_version`` was trained on ``data_version``."""
    s = settings or get_settings()
    key = (model_versions.c.model_name == s.model_name) & (model_versions.c.model_version == str(model_version))
    values = {
        "data_version": data_version,
        "run_id": run_id,
        "promoted": promoted,
        "reason": reason,
        "registered_at": _now(),
    }
    with engine(s).begin() as conn:
        if conn.execute(sa.select(model_versions.c.model_version).where(key)).first():
            conn.execute(model_versions.update().where(key).values(**values))
        else:
            conn.execute(
                model_versions.insert().values(model_name=s.model_name, model_version=str(model_version), **values)
            )


def samples_for_data_version(data_version: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Feedback samples in ``data_version`` (id, role, symbol, case, key), oldest first."""
    j = data_version_samples.join(feedback_samples, data_version_samples.c.sample_id == feedback_samples.c.sample_id)
    q = (
        sa.select(
            feedback_samples.c.sample_id,
            data_version_samples.c.role,
            feedback_samples.c.symbol,
            feedback_samples.c.is_uppercase,
            feedback_samples.c.key,
        )
        .select_from(j)
        .where(data_version_samples.c.data_version == data_version)
        .order_by(feedback_samples.c.sample_id)
    )
    with engine(settings).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def data_version_of_model(model_version: str | int, settings: Settings | None = None) -> str | None:
    s = settings or get_settings()
    q = sa.select(model_versions.c.data_version).where(
        (model_versions.c.model_name == s.model_name) & (model_versions.c.model_version == str(model_version))
    )
    with engine(s).connect() as conn:
        return conn.execute(q).scalar()


def samples_for_model_version(
    model_version: str | int, role: str | None = None, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """Feedback samples in the data a model version was trained and tested on (``role``: train / user_test)."""
    dv = data_version_of_model(model_version, settings)
    if dv is None:
        return []
    rows = samples_for_data_version(dv, settings)
    return [r for r in rows if role is None or r["role"] == role]


def model_versions_for_sample(sample_id: str, settings: Settings | None = None) -> list[str]:
    """Model versions whose data version held ``sample_id`` (ascending)."""
    s = settings or get_settings()
    j = model_versions.join(data_version_samples, model_versions.c.data_version == data_version_samples.c.data_version)
    q = (
        sa.select(model_versions.c.model_version)
        .select_from(j)
        .where((data_version_samples.c.sample_id == sample_id) & (model_versions.c.model_name == s.model_name))
    )
    with engine(s).connect() as conn:
        versions = {r[0] for r in conn.execute(q)}
    return sorted(versions, key=lambda v: (len(v), v))


def roles(sample_ids: Sequence[str], settings: Settings | None = None) -> dict[str, str]:
    """id → role for recorded samples among ``sample_ids``."""
    if not sample_ids:
        return {}
    with engine(settings).connect() as conn:
        q = sa.select(feedback_samples.c.sample_id, feedback_samples.c.role).where(
            feedback_samples.c.sample_id.in_(list(sample_ids))
        )
        return {r[0]: r[1] for r in conn.execute(q)}
