"""The product assembled over real services: Postgres, versitygw (S3) and Temporal.

`stack` gives each test its own database, bucket and task queue, a real worker and the
real API app (in-process over ASGI), so tests exercise every layer but the paid APIs.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager

from activities.providers.registry import ProviderRegistry
from api.main import create_app
from core.contracts import JobStatus, RenditionsState
from core.db import create_engine, session_factory
from core.migrate import upgrade
from core.models import Plan
from core.settings import Settings
from core.storage import Storage, build_storage
from domain.tracks.jobs import JobStore
from domain.users import create_user
from tests.services import TemporalDevServer
from worker import build_worker

pytest_plugins = ["tests.fixtures_services", "tests.unit_guard", "pytester"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Three tiers. `unit` (`scripts/test --unit`, `pytest -m unit`) is explicit: a test marks
# itself, and tests/unit_guard.py fails it if it touches a service. `fast` (`--fast`) is
# assigned here: every test that needs neither a whole stack (API + worker + Temporal) nor
# a browser — the unit tests, domain rules on real databases, workflows with stand-in
# activities, providers against their fakes, replays. Everything else runs in the full run.
FULL_STACK_FIXTURES = frozenset({"stack", "embedded_stack"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        end_to_end = "e2e" in item.path.relative_to(PROJECT_ROOT).parts
        if not end_to_end and not FULL_STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fast)


@dataclass
class Stack:
    settings: Settings
    http: httpx.AsyncClient
    store: JobStore
    storage: Storage
    temporal: TemporalDevServer
    env: dict[str, str]
    _exit: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def user(
        self, credits: int = 100, plan: Plan = Plan.FREE, *, admin: bool = False
    ) -> tuple[uuid.UUID, dict[str, str]]:
        name = f"u-{uuid.uuid4().hex[:6]}"
        user, token = await create_user(self.store.sessions, name, credits, plan, is_admin=admin)
        return user.id, {"Authorization": f"Bearer {token}"}

    async def create_track(self, auth: dict[str, str], **body: Any) -> dict[str, Any]:
        payload = {"prompt": "Warm ambient pad", "duration_s": 6, **body}
        response = await self.http.post("/api/tracks", json=payload, headers=auth)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def wait_for_job(
        self,
        job_id: str,
        auth: dict[str, str],
        until: Callable[[dict[str, Any]], bool] = lambda job: JobStatus(job["status"]).is_terminal,
        timeout_s: float = 60,
        *,
        mastered: bool = True,
    ) -> dict[str, Any]:
        """Poll the job until `until`; a COMPLETE job also until its track's mastering has
        ended (`mastered=False`: return at COMPLETE, while the renditions are made)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            job: dict[str, Any] = (await self.http.get(f"/api/jobs/{job_id}", headers=auth)).json()
            if until(job) and not (mastered and await self._mastering(job, auth)):
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job did not get there in {timeout_s} s: {job}")
            await asyncio.sleep(0.2)

    async def _mastering(self, job: dict[str, Any], auth: dict[str, str]) -> bool:
        if job.get("status") != JobStatus.COMPLETE:
            return False
        track = (await self.http.get(f"/api/tracks/{job['track_id']}", headers=auth)).json()
        return bool(track.get("renditions_state") == RenditionsState.PENDING)

    async def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `soundfoundry ARGS` with this stack's settings (plus `env`)."""
        return await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).parent / "soundfoundry"), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    async def credits(self, user_id: uuid.UUID) -> int:
        from core.models import User

        async with self.store.sessions() as session:
            user = await session.get(User, user_id)
            assert user is not None
            return user.credits

    async def start_worker(self, settings: Settings | None = None) -> None:
        """An in-process worker on this stack's task queue."""
        settings = settings or self.settings
        providers = ProviderRegistry.from_settings(settings)
        worker = build_worker(self.temporal.client, settings, self.store, self.storage, providers)
        await self._exit.enter_async_context(worker)
        self._exit.push_async_callback(providers.aclose)


async def eventually(
    predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30, what: str = ""
) -> None:
    """Wait until `predicate` holds, or fail the test after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        outcome = predicate()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        await asyncio.sleep(0.1)


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as environment variables, for worker subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTH_", "MUSIC_"))}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(item) for item in value)
        env[name.upper()] = str(value)
    for name in ("s3_access_key", "s3_secret_key", "secret_key", "fal_key", "replicate_api_token"):
        secret = getattr(settings, name)
        if secret is not None:
            env[name.upper()] = secret.get_secret_value()
    return env


@pytest.fixture
def worker_command() -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "worker.py")]


async def _assemble(
    settings: Settings, temporal: TemporalDevServer, start_worker: bool
) -> AsyncIterator[Stack]:
    await asyncio.to_thread(upgrade, settings.database_url)
    engine = create_engine(settings.database_url)
    storage = build_storage(settings)
    async with AsyncExitStack() as exit_stack:
        exit_stack.push_async_callback(engine.dispose)
        await storage.open()
        exit_stack.push_async_callback(storage.close)
        app = create_app(settings)
        await exit_stack.enter_async_context(LifespanManager(app))
        http = await exit_stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        )
        stack = Stack(
            settings=settings,
            http=http,
            store=JobStore(session_factory(engine), settings.secret_values()),
            storage=storage,
            temporal=temporal,
            env=settings_env(settings),
        )
        await exit_stack.enter_async_context(stack._exit)
        if start_worker:
            await stack.start_worker()
        yield stack


def base_settings(temporal: TemporalDevServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "temporal_address": temporal.target_host,
        "task_queue": f"tq-{uuid.uuid4().hex[:12]}",
        "music_providers": ["synth"],
        "heartbeat_timeout_s": 5,
        "poll_interval_s": 0.2,
        "retry_initial_interval_s": 0.2,
        "retry_max_interval_s": 2,
        "secret_key": "test-secret-key-for-signing-links",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    """Tests override settings by redefining this fixture or parametrizing it."""
    return {}


@pytest.fixture
def start_worker() -> bool:
    return True


@pytest_asyncio.fixture
async def stack(
    pg_database_url: str,
    s3_gateway: Any,
    s3_bucket: str,
    temporal_server: TemporalDevServer,
    stack_overrides: dict[str, Any],
    start_worker: bool,
) -> AsyncIterator[Stack]:
    """Postgres + S3 (versitygw) + Temporal: the production shape."""
    settings = base_settings(
        temporal_server,
        database_url=pg_database_url,
        storage_backend="s3",
        s3_endpoint=s3_gateway.endpoint,
        s3_access_key=s3_gateway.access_key,
        s3_secret_key=s3_gateway.secret_key,
        s3_bucket=s3_bucket,
        **stack_overrides,
    )
    async for built in _assemble(settings, temporal_server, start_worker):
        yield built


@pytest_asyncio.fixture
async def embedded_stack(
    tmp_path: Path, temporal_server: TemporalDevServer, stack_overrides: dict[str, Any]
) -> AsyncIterator[Stack]:
    """The embedded default: SQLite and a local folder."""
    settings = base_settings(
        temporal_server,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'sf.db'}",
        storage_backend="local",
        storage_local_dir=tmp_path / "objects",
        public_base_url="http://testserver",
        **stack_overrides,
    )
    async for built in _assemble(settings, temporal_server, True):
        yield built
