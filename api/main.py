"""The FastAPI gateway: thin routes over the database, storage and Temporal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from api import security, web
from api.deps import Services
from api.metrics import install_metrics
from api.provider_health import ProviderHealthProbe
from api.routes import (
    admin,
    admin_users,
    covers,
    files,
    health,
    job_events,
    jobs,
    me,
    provider_webhooks,
    share,
    style,
    tracks,
    webhooks,
)
from api.temporal import TemporalGateway
from core.db import create_engine, session_factory
from core.jobs import JobStore
from core.logging import get_logger
from core.settings import Settings, get_settings
from core.storage import build_storage
from core.telemetry import configure_tracing, init_sentry

log = get_logger("soundfoundry.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_tracing("soundfoundry-api")
    init_sentry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.database_url)
        sessions = session_factory(engine)
        storage = build_storage(settings)
        await storage.open()
        temporal = TemporalGateway(settings)
        app.state.services = Services(
            settings=settings,
            engine=engine,
            sessions=sessions,
            jobs=JobStore(sessions, settings.secret_values()),
            storage=storage,
            temporal=temporal,
            provider_health=ProviderHealthProbe(temporal, settings),
        )
        try:
            yield
        finally:
            await storage.close()
            await engine.dispose()

    app = FastAPI(title="SoundFoundry", version=settings.version, lifespan=lifespan)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    security.install(app, settings)  # after CORS: security headers wrap every response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Log the detail; never send a stack trace to the client.
        log.exception("unhandled error", path=request.url.path)
        # Answered outside the middleware stack, so it carries the security headers itself.
        return JSONResponse(
            {"detail": "internal error"}, status_code=500, headers=security.BASE_HEADERS
        )

    for module in (
        health,
        me,
        webhooks,
        provider_webhooks,
        tracks,
        covers,
        share,
        style,
        jobs,
        job_events,
        admin,
        admin_users,
        files,
    ):
        app.include_router(module.router)
    web.install(app)  # the HTML pages and /static
    install_metrics(app)
    # Scrapes and health probes would be most traces and say nothing about a job. The job
    # event stream is long-lived and may carry its token in the query (EventSource).
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="/metrics$,/api/health,/api/jobs/[^/]+/events$",
        exclude_spans=["receive", "send"],
    )
    return app
