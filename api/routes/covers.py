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

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ServicesDep
from api.rate_limit import rate_limit
from api.routes.tracks import owned_track, track_out
from api.schemas import TrackOut
from core.contracts import JobStatus
from core.logging import get_logger
from core.models import Track, User
from domain.covers import (
    USER,
    CoverRenderError,
    RerollConflict,
    TrackNotReady,
    record_cover,
    redraw_generated_cover,
    store_user_cover,
)
from engines.render_sandbox import RenderBusy, RenderTooCostly, sandbox_for
from engines.svg_sanitize import SvgRejected, SvgTooComplex, SvgTooLarge

router = APIRouter(prefix="/api/tracks", tags=["covers"])
log = get_logger("soundfoundry.api")

COVER_SAVE_OFF = "cover saving is turned off (FEATURE_COVER_SAVE=false)"


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


REROLL_CONFLICT = "another re-roll of this track finished first; reload the track to see it"


def _not_complete(track: Track, action: str) -> HTTPException:
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"{action} once the track is COMPLETE (it is {track.status.value})",
    )


def _busy(exc: RenderBusy) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        str(exc),
        headers={"Retry-After": str(exc.retry_after_s)},
    )


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
    track, job = await owned_track(services, track_id, user.id)
    if track.status != JobStatus.COMPLETE:
        raise _not_complete(track, "the cover can be regenerated")
    try:
        track = await redraw_generated_cover(
            services.sessions,
            services.storage,
            track_id,
            style_seed_enabled=services.settings.style_seed_enabled,
            sandbox=sandbox_for(services.settings),
        )
    except TrackNotReady as exc:
        raise _not_complete(track, "the cover can be regenerated") from exc
    except RerollConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, REROLL_CONFLICT) from exc
    except RenderBusy as exc:
        raise _busy(exc) from exc
    except CoverRenderError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"cover not regenerated: {exc}"
        ) from exc
    log.info("cover regenerated", track_id=str(track_id), visual_version=track.visual_version)
    return await track_out(services, track, job)


@router.post("/{track_id}/cover", response_model=CoverSaved)
async def save_cover(
    track_id: uuid.UUID,
    body: CoverIn,
    user: Annotated[User, rate_limit("cover_save")],
    services: ServicesDep,
) -> CoverSaved:
    """Save my own SVG as the cover. Rejections (400, 413, 422, 429) store nothing."""
    if not services.settings.feature_cover_save:
        raise HTTPException(status.HTTP_403_FORBIDDEN, COVER_SAVE_OFF)
    track, _ = await owned_track(services, track_id, user.id)
    if track.status != JobStatus.COMPLETE:
        raise _not_complete(track, "a cover can be saved")
    try:
        svg_key, png_key = await store_user_cover(
            services.storage,
            user.id,
            track_id,
            body.svg,
            body.dark,
            sandbox=sandbox_for(services.settings),
        )
    except SvgTooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
    except RenderBusy as exc:
        raise _busy(exc) from exc
    except (SvgTooComplex, RenderTooCostly) as exc:
        # Well-formed and allowed, but too expensive to draw: refused as content.
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"cover rejected: {exc}"
        ) from exc
    except (SvgRejected, CoverRenderError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"cover rejected: {exc}") from exc
    await record_cover(services.sessions, track_id, svg_key, png_key, source=USER, dark=body.dark)
    log.info("user cover saved", track_id=str(track_id))
    cover_url = await services.storage.signed_url(svg_key, services.settings.signed_url_ttl_s)
    return CoverSaved(track_id=track_id, cover_url=cover_url, cover_source=USER, dark=body.dark)
