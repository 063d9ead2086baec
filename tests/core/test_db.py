"""The embedded default's database engine, on a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from core.db import create_engine, session_factory, transaction

pytestmark = pytest.mark.unit


async def test_one_process_runs_its_sqlite_transactions_one_after_another(
    tmp_path: Path,
) -> None:
    """Sessions of one process take turns on the file instead of colliding in SQLite's
    busy handler: a read-then-write by many concurrent tasks loses none of their updates."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
            await connection.execute(text("INSERT INTO counter (n) VALUES (0)"))
        sessions = session_factory(engine)

        async def bump() -> None:
            async with transaction(sessions) as session:
                connection = await session.connection()
                seen = (await connection.execute(text("SELECT n FROM counter"))).scalar_one()
                await asyncio.sleep(0)  # another task's turn, if it could take one
                await connection.execute(text("UPDATE counter SET n = :n"), {"n": seen + 1})

        await asyncio.gather(*(bump() for _ in range(40)))
        async with engine.connect() as connection:
            total = (await connection.execute(text("SELECT n FROM counter"))).scalar_one()
        assert total == 40
    finally:
        await engine.dispose()
