"""The migrations produce exactly the models, on Postgres and on SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import core.models  # noqa: F401 - registers the tables
from core.db import create_engine
from core.migrate import upgrade


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


async def _migrate_and_compare(url: str) -> list[Any]:
    await asyncio.to_thread(upgrade, url)
    await asyncio.to_thread(upgrade, url)  # a second run is a no-op
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_diff)
    finally:
        await engine.dispose()


async def test_postgres_schema_matches_models(pg_database_url: str) -> None:
    assert await _migrate_and_compare(pg_database_url) == []


async def test_sqlite_schema_matches_models(tmp_path: Path) -> None:
    assert await _migrate_and_compare(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}") == []


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_downgrade_to_base_and_back(
    backend: str, pg_database_url: str, tmp_path: Path
) -> None:
    from alembic import command

    from core.migrate import alembic_config

    url = pg_database_url if backend == "postgres" else f"sqlite+aiosqlite:///{tmp_path / 'd.db'}"
    await asyncio.to_thread(upgrade, url)
    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
    assert await _migrate_and_compare(url) == []
