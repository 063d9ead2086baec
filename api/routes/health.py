"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy import text

from api.deps import Services, ServicesDep
from api.provider_health import ProviderHealthUnavailable

router = APIRouter(prefix="/api/health", tags=["health"])


async def _checks(services: Services) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        async with services.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["db"] = "ok"
    except Exception as exc:
        checks["db"] = f"fail: {type(exc).__name__}"
    # Ready means a create would succeed: Temporal reached, the namespace ours to use, and a
    # start carrying our search attributes accepted (right after they are registered,
    # Temporal refuses them for a while). The sentence names a cause, never a secret.
    problem = await services.temporal.problem()
    checks["temporal"] = "ok" if problem is None else f"fail: {problem}"
    return checks


@router.get("")
async def health(services: ServicesDep) -> dict[str, object]:
    checks = await _checks(services)
    ready = all(v == "ok" for v in checks.values())
    return {
        "status": "ok",
        "version": services.settings.version,
        "ready": ready,
        "checks": checks,
    }


@router.get("/ready")
async def ready(services: ServicesDep, response: Response) -> dict[str, object]:
    checks = await _checks(services)
    ok = all(v == "ok" for v in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ok" if ok else "unavailable", "checks": checks}


@router.get("/providers")
async def provider_health(services: ServicesDep) -> dict[str, str | None]:
    """{"fal": "ok"|"fail"|"unconfigured", "fal_error": ..., "replicate": ..., ...}"""
    try:
        return await services.provider_health.report()
    except ProviderHealthUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
