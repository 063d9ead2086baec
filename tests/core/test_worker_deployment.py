"""Which version a starting worker makes current, on a real Temporal dev server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig

from core.worker_deployment import describe, promote_if_first, versioning_in_use
from tests.services import TemporalDevServer


@activity.defn(name="noop")
async def noop() -> None:
    return None


@asynccontextmanager
async def polling(client: Client, *versions: WorkerDeploymentVersion) -> AsyncIterator[None]:
    """A worker per version on one task queue, polling: the server knows the versions."""
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        for version in versions:
            config = WorkerDeploymentConfig(version=version, use_worker_versioning=True)
            worker = Worker(client, task_queue=queue, activities=[noop], deployment_config=config)
            await stack.enter_async_context(worker)
        yield


def new_deployment(*build_ids: str) -> tuple[WorkerDeploymentVersion, ...]:
    """Versions of a deployment of its own (the session's server has the other tests')."""
    name = f"d-{uuid.uuid4().hex[:8]}"
    return tuple(WorkerDeploymentVersion(name, build_id) for build_id in build_ids)


async def test_of_two_first_versions_starting_at_once_exactly_one_becomes_current(
    temporal_server: TemporalDevServer,
) -> None:
    client = temporal_server.client
    one, two = new_deployment("one", "two")
    name = one.deployment_name
    async with polling(client, one, two):
        promoted = await asyncio.gather(*(promote_if_first(client, v) for v in (one, two)))
        state = await describe(client, name)
        assert state is not None
        assert promoted.count(True) == 1, promoted
        assert state.current == ("one" if promoted[0] else "two")
        # A later start of either changes nothing: the deployment has a current version.
        assert not await promote_if_first(client, one) and not await promote_if_first(client, two)
        after = await describe(client, name)
        assert after is not None and after.current == state.current


async def test_always_makes_a_later_version_current_and_versioning_is_then_in_use(
    temporal_server: TemporalDevServer,
) -> None:
    client = temporal_server.client
    old, new = new_deployment("old", "new")
    async with polling(client, old):
        assert await promote_if_first(client, old)
    async with polling(client, new):
        assert not await promote_if_first(client, new)
        assert await promote_if_first(client, new, always=True)
    state = await describe(client, new.deployment_name)
    assert state is not None and state.current == "new"
    assert {v.build_id: v.status for v in state.versions} == {"old": "draining", "new": "current"}
    reason = await versioning_in_use(client)
    assert reason is not None and "WORKER_VERSIONING is off" in reason
