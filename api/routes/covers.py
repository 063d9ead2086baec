"""Covers: re-roll the generated art, or save the user's own SVG.

Both only for the owner (anyone else gets 404) and only once the track is COMPLETE (409
before): the workflow draws the first cover itself, and neither action races it. Both are
rate limited per user and draw in the render sandbox (engines/render_sandbox.py): a render
stopped at its CPU, memory or time limit, or an SVG whose references fan out past the
sanitizer's budget, answers 422; a user with renders already running answers 429.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ServicesDep
from api.rate_limit import rate_limit
from api.schemas import TrackOut
from api.views import track_out
from core.logging import get_logger
from core.models import User
from domain import covers
from domain.covers import USER

router = APIRouter(prefix="/api/tracks", tags=["covers"])
log = get_logger("soundfoundry.api")


class CoverIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # No length bound here: the sanitizer measures the UTF-8 size and answers 413.
    svg: str = Field(description="an SVG document, at most 1 MB; checked strictly")
    dark: bool = Field(default=False, description="drawn for a dark background")


class CoverSaved(BaseModel):
    track_id: uuid.UUID
    cover_url: str
    cover_source: str
    dark: bool


@router.post("/{track_id}/increment-visual-version", response_model=TrackOut)
async def increment_visual_version(
    track_id: uuid.UUID,
    user: Annotated[User, rate_limit("cover_reroll")],
    services: ServicesDep,
) -> TrackOut:
    """Re-roll the generated cover: visual_version + 1, then draw SVG and PNG anew.

    A track carrying the user's own cover gets generated art again (a re-roll asks for
    it); the user can save their cover again at any time. Of concurrent re-rolls of one
    track one wins; the others answer 409.
    """
    track, job = await covers.reroll_cover(services, user.id, track_id)
    return await track_out(services, track, job)


@router.post("/{track_id}/cover", response_model=CoverSaved)
async def save_cover(
    track_id: uuid.UUID,
    body: CoverIn,
    user: Annotated[User, rate_limit("cover_save")],
    services: ServicesDep,
) -> CoverSaved:
    """Save my own SVG as the cover. Rejections (400, 413, 422, 429) store nothing."""
    svg_key = await covers.save_cover(services, user.id, track_id, body.svg, body.dark)
    cover_url = await services.storage.signed_url(svg_key, services.settings.signed_url_ttl_s)
    return CoverSaved(track_id=track_id, cover_url=cover_url, cover_source=USER, dark=body.dark)
