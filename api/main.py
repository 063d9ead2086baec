"""The FastAPI gateway: thin routes over the database, storage and Temporal."""

from __future__ import annotations

import asyncio
import sqlite3
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from sqlalchemy import exc as sqlalchemy_errors

from api import docs, errors, security, web
from api.deps import Services
from api.metrics import install_metrics
from api.provider_health import ProviderHealthProbe
from api.routes import (
    admin,
    admin_users,
    api_tokens,
    covers,
    downloads,
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
from core.logging import get_logger
from core.settings import Settings, get_settings
from core.storage import build_storage
from core.telemetry import configure_tracing, init_sentry
from domain.tracks.jobs import JobStore

log = get_logger("soundfoundry.api")

# What a client is told to wait before retrying while the database cannot be reached.
DATABASE_RETRY_AFTER_S = 5

# Errors that say the database is out of reach, not that a query was wrong.
_DATABASE_DOWN = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and a connection closed under us
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    sqlalchemy_errors.TimeoutError,  # the pool had no free connection in time
)
# A bare OSError (connection refused, reset, DNS) escapes the driver unwrapped when a new
# connection cannot be opened; where it was raised tells it from other network errors.
_DATABASE_MODULES = ("sqlalchemy.", "asyncpg.", "aiosqlite.")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [exc]
    while pending:
        link = pending.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        if isinstance(link, BaseExceptionGroup):
            pending.extend(link.exceptions)
        pending.extend(e for e in (link.__cause__, link.__context__) if e is not None)


def _raised_in_database_driver(exc: BaseException) -> bool:
    return any(
        str(frame.f_globals.get("__name__", "")).startswith(_DATABASE_MODULES)
        for frame, _ in traceback.walk_tb(exc.__traceback__)
    )


def database_unavailable(exc: BaseException) -> bool:
    """Is this the database being unreachable (down, restarting, pool exhausted, locked)?"""
    for link in _causes(exc):
        if isinstance(link, _DATABASE_DOWN):
            return True
        if isinstance(link, sqlalchemy_errors.DBAPIError) and link.connection_invalidated:
            return True
        if isinstance(link, sqlite3.OperationalError) and "database is locked" in str(link):
            return True
        if isinstance(link, OSError) and _raised_in_database_driver(link):
            return True
    return False


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_tracing("soundfoundry-api")
    init_sentry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
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
        # Not awaited: the API starts while Temporal may still be coming up.
        temporal_check = asyncio.create_task(temporal.report())
        try:
            yield
        finally:
            temporal_check.cancel()
            await storage.close()
            await engine.dispose()

    # /docs and /redoc come from api/docs.py: local assets and a CSP of their own.
    app = FastAPI(
        title="SoundFoundry",
        version=settings.version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
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

    async def database_outage(request: Request, exc: Exception) -> JSONResponse:
        # The one place a database outage becomes an answer: 503 and when to retry. Every
        # write is one transaction, so a request cut off here has left nothing behind.
        if not database_unavailable(exc):
            raise exc  # a real bug: the 500 handler above logs it
        # The class only: a driver message can quote the statement and its parameters.
        log.warning("database unavailable", path=request.url.path, error=type(exc).__name__)
        return JSONResponse(
            {"detail": "the database is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    # Registered by type so it runs inside the middleware stack (headers, metrics) and
    # the request ends cleanly instead of re-raising as an unhandled error.
    for kind in (
        sqlalchemy_errors.SQLAlchemyError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        sqlite3.Error,
        OSError,
    ):
        app.add_exception_handler(kind, database_outage)

    errors.install(app)  # use cases' refusals: one status per kind

    for module in (
        health,
        me,
        api_tokens,
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
        downloads,
    ):
        app.include_router(module.router)
    docs.install(app)  # /docs and /redoc
    web.install(app)  # the HTML pages and /static
    install_metrics(app, settings)  # /metrics: METRICS_TOKEN, API_METRICS_PORT
    # Scrapes and health probes would be most traces and say nothing about a job. The job
    # event stream is long-lived and may carry its token in the query (EventSource).
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="/metrics$,/api/health,/api/jobs/[^/]+/events$",
        exclude_spans=["receive", "send"],
    )
    return app
