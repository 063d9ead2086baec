"""Per-app services (held by the lifespan) and request dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine

from api.provider_health import ProviderHealthProbe
from api.temporal import TemporalGateway
from core.db import SessionFactory
from core.models import User
from core.settings import Settings
from core.storage import Storage
from domain.tracks.jobs import JobStore
from domain.users import user_for_token


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: SessionFactory
    jobs: JobStore
    storage: Storage
    temporal: TemporalGateway
    provider_health: ProviderHealthProbe


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False)


async def authenticate(
    services: Services, token: str | None, missing: str = "missing bearer token"
) -> User:
    """The user holding this API token, or 401."""
    if not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, missing, headers={"WWW-Authenticate": "Bearer"}
        )
    user = await user_for_token(services.sessions, token)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or revoked token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


async def current_user(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    token = None
    if credentials is not None and credentials.scheme.lower() == "bearer":
        token = credentials.credentials
    return await authenticate(services, token)


CurrentUser = Annotated[User, Depends(current_user)]


def admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin only")
    return user
