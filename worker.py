"""The Temporal worker: runs TrackWorkflow and its activities on one task queue.

Run several of these (processes or hosts) on the same queue to scale out:
    soundfoundry worker        or        python worker.py
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker, WorkerTuner

from activities.assets import AssetActivities
from activities.generation import GenerationActivities
from activities.health import HealthActivities
from activities.jobs import JobActivities
from activities.providers.registry import ProviderRegistry
from activities.reconcile import ReconcileActivities
from activities.sweep import SweepActivities
from activities.webhooks import WebhookActivities
from core.contracts import RECONCILE_WORKFLOW, reconcile_schedule_id
from core.db import create_engine, session_factory
from core.deployment import deployment_config
from core.logging import configure_logging, get_logger
from core.metrics import WORKER_REGISTRY, MetricsServer, RemoteTextCollector, init_worker_series
from core.settings import Settings, get_settings
from core.storage import Storage, build_storage
from core.telemetry import configure_tracing, init_sentry
from core.temporal import (
    SearchAttributesMissing,
    client_for,
    make_namespace_ready,
    temporal_connection,
)
from core.temporal_errors import TemporalUnavailable
from core.worker_deployment import VersioningRefused, WorkerVersioning
from domain.providers.lost_answers import fal_without_webhooks_problem, lost_answer_costs
from domain.tracks.jobs import JobStore
from workflows.provider_health import ProviderHealthWorkflow
from workflows.reconcile import ReconcileWorkflow
from workflows.track import TrackWorkflow

log = get_logger("soundfoundry.worker")


def sdk_metrics_runtime() -> tuple[Runtime, str]:
    """A Temporal runtime exporting the SDK's metrics on a private loopback port; the
    worker's /metrics re-exports them. Returns the runtime and that endpoint's URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # `_total` on counters: the names the re-export would give them anyway.
    config = PrometheusConfig(bind_address=f"127.0.0.1:{port}", counters_total_suffix=True)
    return Runtime(telemetry=TelemetryConfig(metrics=config)), f"http://127.0.0.1:{port}/metrics"


class Workers:
    """The worker process's Temporal workers, run together: the track queue's, and the
    mastering queue's (CPU-heavy, at most WORKER_MAX_CONCURRENT_MASTERING at a time).
    `before_start` may refuse the start; `after_start` runs once they poll."""

    def __init__(
        self,
        *workers: Worker,
        after_stop: Callable[[], Awaitable[None]] | None = None,
        before_start: Callable[[], Awaitable[None]] | None = None,
        after_start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.workers = workers
        self._after_stop = after_stop
        self._before_start = before_start
        self._after_start = after_start
        self._running = AsyncExitStack()

    async def __aenter__(self) -> Workers:
        if self._before_start is not None:
            await self._before_start()
        async with AsyncExitStack() as starting:
            if self._after_stop is not None:
                # Runs last: the workers' activities are done or cancelled by then.
                starting.push_async_callback(self._after_stop)
            for worker in self.workers:
                await starting.enter_async_context(worker)
            if self._after_start is not None:
                await self._after_start()
            self._running = starting.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._running.aclose()


def build_worker(
    client: Client,
    settings: Settings,
    store: JobStore,
    storage: Storage,
    providers: ProviderRegistry,
) -> Workers:
    jobs = JobActivities(store, providers, settings)
    generation = GenerationActivities(store, storage, providers, settings)
    assets = AssetActivities(store, storage, settings)
    health = HealthActivities(providers)
    reconcile = ReconcileActivities(store, client, settings)
    webhooks = WebhookActivities(store, settings)
    sweep = SweepActivities(generation.jobs)
    init_worker_series()
    # A client connected elsewhere (tests, bench) lacks the tracing interceptor; add it
    # here then, and not twice when the client has it.
    traced = any(isinstance(i, TracingInterceptor) for i in client.config()["interceptors"])
    interceptors = [] if traced else [TracingInterceptor()]
    shutdown = timedelta(seconds=settings.worker_graceful_shutdown_s)
    deployment = deployment_config(settings)
    mastering = Worker(
        client,
        task_queue=settings.mastering_task_queue,
        interceptors=interceptors,
        activities=[assets.master_audio],
        max_concurrent_activities=settings.worker_max_concurrent_mastering,
        graceful_shutdown_timeout=shutdown,
        deployment_config=deployment,
    )
    tracks = Worker(
        client,
        task_queue=settings.task_queue,
        interceptors=interceptors,
        workflows=[TrackWorkflow, ProviderHealthWorkflow, ReconcileWorkflow],
        activities=[
            jobs.plan_track,
            jobs.complete_job,
            jobs.finish_job,
            generation.submit_generation,
            generation.poll_generation,
            generation.collect_audio,
            generation.cancel_submissions,
            assets.store_cover,
            assets.record_renditions,
            health.check_provider_health,
            reconcile.reconcile_jobs,
            sweep.sweep_submissions,
            webhooks.deliver_webhook,
        ],
        **_slots(settings),
        # Running activities get this long to finish after SIGTERM; long generations are
        # resumed by another worker from their heartbeat, so nothing waits on a deploy.
        graceful_shutdown_timeout=shutdown,
        deployment_config=deployment,
    )
    versioning = WorkerVersioning(client, settings)
    return Workers(
        tracks,
        mastering,
        after_stop=assets.mastering.aclose,
        before_start=versioning.refuse_unversioned,
        after_start=versioning.make_current,
    )


def _slots(settings: Settings) -> dict[str, Any]:
    """Worker slot options: fixed counts, or the SDK's resource-based tuner. Waiting on a
    provider holds no slot either way (the workflow waits on timers)."""
    if settings.worker_tuning == "resource":
        tuner = WorkerTuner.create_resource_based(
            target_cpu_usage=settings.worker_target_cpu,
            target_memory_usage=settings.worker_target_memory,
        )
        return {"tuner": tuner}
    return {
        "max_concurrent_activities": settings.worker_max_concurrent_activities,
        "max_concurrent_workflow_tasks": settings.worker_max_concurrent_workflow_tasks,
    }


async def ensure_reconcile_schedule(client: Client, settings: Settings) -> None:
    """One schedule per task queue; every worker makes sure it exists."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            RECONCILE_WORKFLOW,
            id=f"{reconcile_schedule_id(settings.task_queue)}-run",
            task_queue=settings.task_queue,
            execution_timeout=timedelta(minutes=5),
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_interval_s))]
        ),
        # A slow pass must not pile up behind itself.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    with suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(reconcile_schedule_id(settings.task_queue), schedule)


@asynccontextmanager
async def worker_resources(
    settings: Settings,
) -> AsyncIterator[tuple[JobStore, Storage, ProviderRegistry]]:
    engine = create_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    storage = build_storage(settings)
    providers = ProviderRegistry.from_settings(settings)
    await storage.open()
    try:
        yield JobStore(session_factory(engine), settings.secret_values()), storage, providers
    finally:
        await providers.aclose()
        await storage.close()
        await engine.dispose()


async def run_worker(settings: Settings) -> None:
    configure_tracing("soundfoundry-worker")
    init_sentry(settings)
    runtime, metrics = None, None
    if settings.worker_metrics_port:
        runtime, sdk_url = sdk_metrics_runtime()
        metrics = MetricsServer(
            settings.worker_metrics_port, [WORKER_REGISTRY, RemoteTextCollector(sdk_url)]
        )
        metrics.start()
    try:
        await _serve(settings, runtime)
    finally:
        if metrics is not None:
            metrics.stop()


async def connect_ready(settings: Settings, runtime: Runtime | None) -> Client:
    """A client for a namespace where track workflows can start now: it exists, we may use
    it, and our search attributes are registered (by us where we may) and accepted by the
    server. Anything else ends start-up with one sentence saying what is wrong."""
    try:
        client = await client_for(settings, runtime=runtime)
        # 'worker ready' must mean a create would succeed.
        ready = await make_namespace_ready(
            client, settings, attributes=settings.search_attributes_enabled
        )
        if ready.attributes.added:
            log.info("search attributes registered", names=ready.attributes.added)
    except (TemporalUnavailable, SearchAttributesMissing) as exc:
        raise SystemExit(f"refusing to start: {exc}") from None
    return client


async def _serve(settings: Settings, runtime: Runtime | None) -> None:
    client = await connect_ready(settings, runtime)
    async with worker_resources(settings) as (store, storage, providers):
        worker = build_worker(client, settings, store, storage, providers)
        await ensure_reconcile_schedule(client, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "worker ready",
            event_loop=type(loop).__module__.split(".")[0],
            task_queue=settings.task_queue,
            providers=settings.provider_chain,
            temporal=temporal_connection(settings).describe(),
            # What a submit whose answer is lost costs, per provider (an operator's
            # reminder of FAL_WITHOUT_WEBHOOKS and PROVIDER_WEBHOOKS_ENABLED).
            lost_submit_answer=lost_answer_costs(settings),
        )
        async with worker:
            await stop.wait()
            log.info("worker stopping", graceful_shutdown_s=settings.worker_graceful_shutdown_s)


def _run_on_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop's event loop where it is built (not on Windows): the worker's loop is its
    busiest thread (the activities' HTTP, aiosqlite's and Temporal's callbacks from their
    threads), and uvloop cut the worker's CPU per track by ~10% in `bench.pipeline`."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def startup_problems(settings: Settings) -> list[str]:
    """Why this worker must not start; `soundfoundry worker` says the same."""
    problems = [settings.secret_key_problem(), fal_without_webhooks_problem(settings)]
    return [problem for problem in problems if problem]


def main() -> None:
    settings = get_settings()
    if problems := startup_problems(settings):
        # The same refusal as `soundfoundry worker`, for `python worker.py`.
        raise SystemExit("refusing to start: " + "; ".join(problems))
    configure_logging(settings.log_level, settings.secret_values())
    try:
        _run_on_event_loop(run_worker(settings))
    except VersioningRefused as exc:
        raise SystemExit(f"refusing to start: {exc}") from None


if __name__ == "__main__":
    main()
