"""The style system over HTTP: my style, my series, and the public design tokens.

Each part answers 403 with the flag's name while its flag is off (domain/style.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CurrentUser, ServicesDep
from api.rate_limit import rate_limit
from core.logging import get_logger
from core.models import Series, StyleUnlock, User
from domain import style

router = APIRouter(tags=["style"])
log = get_logger("soundfoundry.api")


class SeriesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(default=None, max_length=100, pattern=style.SLUG_PATTERN)


class SeriesOut(BaseModel):
    id: uuid.UUID
    slug: str
    title: str
    default: bool
    created_at: datetime


class UnlockOut(BaseModel):
    kind: str
    name: str
    unlocked_at: datetime


class StyleOut(BaseModel):
    enabled: dict[str, bool]
    style_seed: int | None
    unlocks: list[UnlockOut] | None
    series: list[SeriesOut] | None


def _series_out(series: Series) -> SeriesOut:
    return SeriesOut(
        id=series.id,
        slug=series.slug,
        title=series.title,
        default=series.slug == style.default_series_slug(series.user_id),
        created_at=series.created_at,
    )


def _unlock_out(unlock: StyleUnlock) -> UnlockOut:
    return UnlockOut(kind=unlock.kind, name=unlock.name, unlocked_at=unlock.unlocked_at)


def _forbidden(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, detail)


@router.get("/api/style/me", response_model=StyleOut)
async def my_style(user: CurrentUser, services: ServicesDep) -> StyleOut:
    """My style seed, unlocks and series; a part whose flag is off is null."""
    s = services.settings
    enabled = {
        "seed": s.style_seed_enabled,
        "unlocks": s.style_unlocks_enabled,
        "series": s.style_series_enabled,
    }
    if not any(enabled.values()):
        raise _forbidden(style.ALL_OFF)
    seed = await style.ensure_style_seed(services.sessions, user.id) if enabled["seed"] else None
    unlocks = (
        [_unlock_out(u) for u in await style.sync_unlocks(services.sessions, user.id)]
        if enabled["unlocks"]
        else None
    )
    series = (
        [_series_out(x) for x in await style.user_series(services.sessions, user.id)]
        if enabled["series"]
        else None
    )
    return StyleOut(enabled=enabled, style_seed=seed, unlocks=unlocks, series=series)


@router.get("/api/style/unlocks", response_model=list[UnlockOut])
async def my_unlocks(user: CurrentUser, services: ServicesDep) -> list[UnlockOut]:
    if not services.settings.style_unlocks_enabled:
        raise _forbidden(style.UNLOCKS_OFF)
    return [_unlock_out(u) for u in await style.sync_unlocks(services.sessions, user.id)]


@router.get("/api/style/series", response_model=list[SeriesOut])
async def list_series(user: CurrentUser, services: ServicesDep) -> list[SeriesOut]:
    """My series, the default one first (it is created on first use)."""
    if not services.settings.style_series_enabled:
        raise _forbidden(style.SERIES_OFF)
    return [_series_out(x) for x in await style.user_series(services.sessions, user.id)]


@router.post("/api/style/series", response_model=SeriesOut, status_code=status.HTTP_201_CREATED)
async def create_series(
    body: SeriesIn,
    user: Annotated[User, rate_limit("series_create")],
    services: ServicesDep,
) -> SeriesOut:
    """A new series: `{title, slug?}`; the slug is derived from the title when omitted."""
    if not services.settings.style_series_enabled:
        raise _forbidden(style.SERIES_OFF)
    if body.slug is not None and body.slug.startswith(style.DEFAULT_SERIES_PREFIX):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"slugs starting with {style.DEFAULT_SERIES_PREFIX!r} are reserved",
        )
    title = " ".join(body.title.split())
    if not title:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "title must not be blank")
    # The user's default series exists before any other, so it always sorts first.
    await style.default_series_id(services.sessions, user.id)
    try:
        series = await style.create_series(services.sessions, user.id, title, body.slug)
    except style.SeriesExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    log.info("series created", user_id=str(user.id), series_id=str(series.id))
    return _series_out(series)


@router.get("/api/tokens")
async def design_tokens(response: Response) -> dict[str, Any]:
    """Public design tokens (palettes, type scale, spacing) shared by covers and the UI."""
    response.headers["Cache-Control"] = "public, max-age=3600"
    return style.tokens()


# --------------------------------------------------------------------------- track hooks
