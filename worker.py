"""The Temporal worker: runs TrackWorkflow and its activities on one task queue.

Run several of these (processes or hosts) on the same queue to scale out:
    soundfoundry worker        or        python worker.py
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.assets import AssetActivities
from activities.generation import GenerationActivities
from activities.health import HealthActivities
from activities.jobs import JobActivities
from activities.providers.registry import ProviderRegistry
from core.db import create_engine, session_factory
from core.jobs import JobStore
from core.logging import configure_logging, get_logger
from core.settings import Settings, get_settings
from core.storage import Storage, build_storage
from workflows.provider_health import ProviderHealthWorkflow
from workflows.track import TrackWorkflow

log = get_logger("soundfoundry.worker")


async def connect_temporal(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )


def build_worker(
    client: Client,
    settings: Settings,
    store: JobStore,
    storage: Storage,
    providers: ProviderRegistry,
) -> Worker:
    jobs = JobActivities(store, providers, settings)
    generation = GenerationActivities(store, storage, providers, settings)
    assets = AssetActivities(store, storage)
    health = HealthActivities(providers)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[TrackWorkflow, ProviderHealthWorkflow],
        activities=[
            jobs.plan_track,
            jobs.record_job_event,
            jobs.complete_job,
            jobs.finish_job,
            generation.submit_generation,
            generation.await_generation,
            generation.cancel_generation,
            generation.check_audio,
            assets.store_audio,
            assets.store_cover,
            health.check_provider_health,
        ],
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        # Running activities get this long to finish after SIGTERM; long generations are
        # resumed by another worker from their heartbeat, so nothing waits on a deploy.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_s),
    )


@asynccontextmanager
async def worker_resources(
    settings: Settings,
) -> AsyncIterator[tuple[JobStore, Storage, ProviderRegistry]]:
    engine = create_engine(settings.database_url)
    storage = build_storage(settings)
    providers = ProviderRegistry.from_settings(settings)
    await storage.open()
    try:
        yield JobStore(session_factory(engine)), storage, providers
    finally:
        await providers.aclose()
        await storage.close()
        await engine.dispose()


async def run_worker(settings: Settings) -> None:
    client = await connect_temporal(settings)
    async with worker_resources(settings) as (store, storage, providers):
        worker = build_worker(client, settings, store, storage, providers)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "worker ready",
            task_queue=settings.task_queue,
            providers=settings.provider_chain,
            temporal=settings.temporal_address,
        )
        async with worker:
            await stop.wait()
            log.info("worker stopping", graceful_shutdown_s=settings.worker_graceful_shutdown_s)


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.secret_values())
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
