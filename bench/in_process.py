"""The whole product inside the bench's own process: migrations applied, a worker on the
given Temporal server, and the API reached over ASGI (no sockets, no second process).

For benches that measure one path end to end; `bench.faults.bench_stack` is the one to use
when workers must be separate processes (to kill them, or to measure their memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from asgi_lifespan import LifespanManager
from temporalio.client import Client

from activities.providers.registry import ProviderRegistry
from api.main import create_app
from core.db import create_engine, session_factory
from core.migrate import upgrade
from core.settings import Settings
from core.storage import build_storage
from domain.tracks.jobs import JobStore
from domain.users import create_user
from worker import build_worker


@dataclass
class InProcessStack:
    http: httpx.AsyncClient
    store: JobStore
    settings: Settings

    async def user(self, name: str, credits: int) -> dict[str, str]:
        """A new user's Authorization header."""
        _, token = await create_user(self.store.sessions, name, credits)
        return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def in_process_stack(
    temporal: Client, settings: Settings, *, timeout_s: float = 5.0
) -> AsyncIterator[InProcessStack]:
    await asyncio.to_thread(upgrade, settings.database_url)
    engine = create_engine(settings.database_url)
    store = JobStore(session_factory(engine), settings.secret_values())
    storage = build_storage(settings)
    providers = ProviderRegistry.from_settings(settings)
    app = create_app(settings)
    try:
        async with (
            build_worker(temporal, settings, store, storage, providers),
            LifespanManager(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=timeout_s
            ) as http,
        ):
            yield InProcessStack(http, store, settings)
    finally:
        await providers.aclose()
        await storage.close()
        await engine.dispose()
