"""The FastAPI gateway: thin routes over the database, storage and Temporal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from api.deps import Services
from api.provider_health import ProviderHealthProbe
from api.routes import files, health, jobs, tracks
from api.temporal import TemporalGateway
from core.db import create_engine, session_factory
from core.jobs import JobStore
from core.logging import get_logger
from core.settings import Settings, get_settings
from core.storage import build_storage

log = get_logger("soundfoundry.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

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
            jobs=JobStore(sessions),
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

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Log the detail; never send a stack trace to the client.
        log.exception("unhandled error", path=request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    for module in (health, tracks, jobs, files):
        app.include_router(module.router)
    return app
