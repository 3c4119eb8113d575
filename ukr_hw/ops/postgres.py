"""Databases on the PostgreSQL server the native stack uses (the stack does not run PostgreSQL itself)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ukr_hw.ops import StackError

if TYPE_CHECKING:
    import psycopg


def pg_conninfo(admin_url: str) -> str:
    """libpq conninfo from a SQLAlchemy-style or plain postgres URL."""
    return admin_url.replace("postgresql+psycopg://", "postgresql://").replace("postgresql+asyncpg://", "postgresql://")


def pg_connect(admin_url: str) -> psycopg.Connection:
    """An autocommit connection to ``admin_url``; :class:`StackError` saying what to do when none answers."""
    import psycopg

    try:
        return psycopg.connect(pg_conninfo(admin_url), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StackError(
            f"PostgreSQL not reachable at {admin_url}: {' '.join(str(exc).split())}. Start PostgreSQL (e.g. "
            "`sudo service postgresql start`) or set UKR_HW_POSTGRES_URL to a server where this user may create "
            "databases."
        ) from exc


def database_url(admin_url: str, name: str, driver: str = "psycopg") -> str:
    """SQLAlchemy URL of database ``name`` on the server of ``admin_url`` (``driver``: psycopg or asyncpg)."""
    base = pg_conninfo(admin_url).removeprefix("postgresql://")
    hostpart = base.split("/", 1)[0]
    return f"postgresql+{driver}://{hostpart}/{name}"


def valid_db_name(name: str) -> str:
    """``name`` when it is safe to quote into SQL; :class:`StackError` otherwise."""
    if not name or not all(c.isalnum() or c == "_" for c in name) or len(name) > 63:
        raise StackError(f"invalid database name {name!r}: use letters, digits and underscores (≤ 63 characters)")
    return name


def ensure_database(name: str, admin_url: str) -> bool:
    """Create database ``name`` unless it exists; True when it was created."""
    valid_db_name(name)
    with pg_connect(admin_url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(f'CREATE DATABASE "{name}"')
        return True


def drop_database(name: str, admin_url: str) -> None:
    """Drop database ``name`` (disconnecting its sessions) if it exists."""
    valid_db_name(name)
    with pg_connect(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temporary_database(admin_url: str, prefix: str = "ukrhw_test") -> Iterator[str]:
    """A fresh database for the duration of the block; yields its ``postgresql+psycopg://`` URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    ensure_database(name, admin_url)
    try:
        yield database_url(admin_url, name)
    finally:
        drop_database(name, admin_url)


def require_asyncpg() -> None:
    """Prefect's server talks to PostgreSQL through asyncpg: say how to install it when it is missing."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        raise StackError("prefect server on PostgreSQL needs the asyncpg driver: `uv pip install asyncpg`") from None
