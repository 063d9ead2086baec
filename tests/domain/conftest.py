"""Domain rules run on the real databases, without Temporal, a worker or the API: each
test gets a freshly migrated SQLite file and a fresh Postgres database in turn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client

from core.db import SessionFactory, create_engine, session_factory
from core.migrate import upgrade
from core.settings import Settings
from core.storage import Storage, build_storage
from core.temporal import client_for
from domain.tracks.jobs import JobStore


def domain_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "storage_local_dir": tmp_path / "objects",
        "secret_key": "test-secret-key-for-signing-links",
        # Nothing listens here: a use case that reaches for Temporal finds it down.
        "temporal_address": f"127.0.0.1:{_closed_port()}",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class TemporalAt:
    """The real client factory, pointed at the settings' address."""

    settings: Settings

    async def client(self) -> Client:
        return await client_for(self.settings)


@dataclass
class DomainContext:
    settings: Settings
    sessions: SessionFactory
    jobs: JobStore
    storage: Storage
    temporal: TemporalAt


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'domain.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    return url


@pytest_asyncio.fixture
async def ctx(database_url: str, tmp_path: Path) -> AsyncIterator[DomainContext]:
    settings = domain_settings(database_url, tmp_path)
    await asyncio.to_thread(upgrade, database_url)
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    try:
        yield DomainContext(
            settings=settings,
            sessions=sessions,
            jobs=JobStore(sessions, settings.secret_values()),
            storage=build_storage(settings),
            temporal=TemporalAt(settings),
        )
    finally:
        await engine.dispose()
