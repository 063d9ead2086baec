"""`soundfoundry doctor`: the go-live probe, one pass/fail line per dependency."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from temporalio.service import RPCError

from activities.providers.registry import ProviderRegistry
from core.db import create_engine
from core.migrate import alembic_config
from core.s3_storage import S3Storage
from core.settings import Settings
from core.storage import LocalStorage, build_storage
from core.temporal import (
    NOT_OURS,
    client_for,
    create_command,
    describe_namespace,
    missing_search_attributes,
    search_attributes_usable,
    temporal_connection,
)
from core.temporal_errors import TemporalUnavailable


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


async def check_database(settings: Settings) -> Check:
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(_current_revision)
    finally:
        await engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    if current != head:
        return Check("database", False, f"migrations at {current}, head is {head}: run migrate")
    return Check("database", True, f"reachable, migrations at head ({head})")


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def check_temporal(settings: Settings) -> Check:
    """Connected, the namespace ours to use, and a start carrying our search attributes
    accepted now: what a create needs. Failures are one sentence (core/temporal_errors)."""
    connection = temporal_connection(settings)
    client = await client_for(settings)
    await describe_namespace(client, connection)
    where = connection.describe()
    if not settings.search_attributes_enabled:
        return Check("temporal", True, f"{where}, search attributes off")
    namespace = connection.namespace
    try:
        missing = await missing_search_attributes(client, namespace)
    except RPCError as exc:
        if exc.status not in NOT_OURS:
            raise
        missing = []  # not ours to list: the probe below tells whether they work
    if missing:
        return Check(
            "temporal",
            False,
            f"search attributes not registered: {', '.join(missing)} (a worker registers"
            " them when it starts where it may; else run `soundfoundry temporal setup` or"
            f" {create_command(namespace, missing)}; or set SEARCH_ATTRIBUTES_ENABLED=false)",
        )
    reason = await search_attributes_usable(client)
    if reason is not None:
        return Check(
            "temporal",
            False,
            f"Temporal does not accept our search attributes on namespace {namespace} yet:"
            f" {reason} (just registered: its namespace cache refreshes within seconds;"
            " else run `soundfoundry temporal setup`)",
        )
    return Check("temporal", True, f"{where}, search attributes registered and usable")


async def check_storage(settings: Settings) -> Check:
    storage = build_storage(settings)
    async with storage:
        if isinstance(storage, S3Storage):
            await storage.client.head_bucket(Bucket=storage.bucket)
            where = f"bucket {storage.bucket}"
        else:
            assert isinstance(storage, LocalStorage)
            where = f"folder {storage.root}"
        # Prove we can write, read and sign, then leave nothing behind.
        key = "doctor/probe.txt"
        await storage.put_bytes(key, b"ok", "text/plain")
        assert await storage.get_bytes(key) == b"ok"
        await storage.signed_url(key, 60)
        await storage.delete(key)
    return Check("storage", True, f"{where}: write, read, sign and delete work")


async def check_providers(settings: Settings) -> list[Check]:
    registry = ProviderRegistry.from_settings(settings)
    try:
        checks = []
        for name in settings.provider_chain:
            health = await registry.get(name).health()
            ok = health.status == "ok"
            detail = health.status + (f": {health.error}" if health.error else "")
            checks.append(Check(f"provider {name}", ok, detail))
        return checks
    finally:
        await registry.aclose()


async def run_checks(settings: Settings) -> list[Check]:
    probes: list[tuple[str, Callable[[Settings], Awaitable[Check]]]] = [
        ("database", check_database),
        ("temporal", check_temporal),
        ("storage", check_storage),
    ]
    results = []
    for name, probe in probes:
        try:
            results.append(await asyncio.wait_for(probe(settings), timeout=20))
        except TemporalUnavailable as exc:
            results.append(Check(name, False, str(exc)))
        except Exception as exc:
            results.append(Check(name, False, f"{type(exc).__name__}: {exc}"[:300]))
    try:
        results.extend(await check_providers(settings))
    except Exception as exc:
        results.append(Check("providers", False, f"{type(exc).__name__}: {exc}"[:300]))
    return results
