"""Small SQL helpers that differ per database dialect."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession


def dialect_insert(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that knows ON CONFLICT for the session's database (Postgres or SQLite).

    Both dialects spell `on_conflict_do_update` / `on_conflict_do_nothing` and `excluded`
    the same way, so callers write one upsert for both.
    """
    bind = session.bind
    if bind is not None and bind.dialect.name == "postgresql":
        return postgresql.insert(table)
    if bind is not None and bind.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"no upsert for database dialect {bind.dialect.name if bind else None!r}")
