"""Tracks: create (starts the workflow), read with signed links, list."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import JSONResponse, RedirectResponse

from api.deps import CurrentUser, ServicesDep
from api.downloads import DownloadFormat, renditions_out
from api.idempotency import IdempotencyKeyHeader, replay
from api.idempotency import claim as idempotency_claim
from api.rate_limit import rate_limit
from api.schemas import (
    MAX_PAGE_LIMIT,
    MAX_PAGE_OFFSET,
    TrackCreate,
    TrackCreated,
    TrackOut,
    TrackPage,
)
from api.temporal import ATTRIBUTES_RETRY_AFTER_S
from api.views import track_out
from core.contracts import JobStatus, RenditionsState
from core.logging import get_logger
from core.models import Job, Track, User
from domain.credits import InsufficientCredits
from domain.errors import Unavailable
from domain.tracks import create as tracks
from domain.tracks.create import TrackOrder, price
from domain.tracks.idempotency import IdempotencyKeyTaken, request_hash
from domain.tracks.ownership import owned_track, user_tracks

router = APIRouter(prefix="/api/tracks", tags=["tracks"])
log = get_logger("soundfoundry.api")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TrackCreated,
    responses={
        status.HTTP_202_ACCEPTED: {
            "model": TrackCreated,
            "description": "Created and paid for, but Temporal could not confirm that the "
            "workflow started; the reconciler starts it after RECONCILE_START_AFTER_S if it "
            "did not. Follow the job; do not create it again.",
        },
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "description": "The workflow could not be started; the credits were refunded "
            "and the Idempotency-Key released, so a retry makes a new track. Or Temporal does "
            "not accept the search attributes yet (the detail says why and what to run); "
            "nothing was charged.",
        },
    },
)
async def create_track(
    body: TrackCreate,
    user: Annotated[User, rate_limit("create_track")],
    services: ServicesDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> TrackCreated | JSONResponse:
    body_hash = request_hash(body.model_dump(mode="json"))
    if idempotency_key is not None:
        previous = await replay(services.sessions, user.id, idempotency_key, body_hash)
        if previous is not None:
            return previous
    if problem := await services.temporal.start_problem():
        # Refused before anything is charged: the start would fail on our search attributes.
        raise Unavailable(problem, retry_after_s=ATTRIBUTES_RETRY_AFTER_S)
    order = TrackOrder(**body.model_dump())
    claim = idempotency_claim(
        idempotency_key,
        body_hash,
        status.HTTP_201_CREATED,
        lambda track, job: _created(track, job, price(order)).model_dump(mode="json"),
        unconfirmed_status_code=status.HTTP_202_ACCEPTED,
    )
    try:
        created = await tracks.create_track(services, user, order, claim)
    except (InsufficientCredits, IdempotencyKeyTaken) as exc:
        # A concurrent request with the same key won (maybe spending the last credits).
        if idempotency_key is not None:
            previous = await replay(services.sessions, user.id, idempotency_key, body_hash)
            if previous is not None:
                return previous
        if isinstance(exc, IdempotencyKeyTaken):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "a concurrent request with this Idempotency-Key did not complete; retry",
            ) from exc
        raise
    answer = _created(created.track, created.job, created.cost)
    if not created.confirmed:
        # Created and paid; a retry replays this 202 rather than making another track.
        return JSONResponse(answer.model_dump(mode="json"), status.HTTP_202_ACCEPTED)
    return answer


def _created(track: Track, job: Job, cost: int) -> TrackCreated:
    return TrackCreated(
        track_id=track.id,
        job_id=job.id,
        credits_required=cost,
        status=JobStatus.QUEUED,
        workflow_id=job.workflow_id,
    )


@router.get("", response_model=TrackPage)
async def list_tracks(
    user: CurrentUser,
    services: ServicesDep,
    limit: int = Query(default=20, ge=1, le=MAX_PAGE_LIMIT),
    offset: int = Query(default=0, ge=0, le=MAX_PAGE_OFFSET),
) -> TrackPage:
    pairs, total = await user_tracks(services.sessions, user.id, limit, offset)
    items = [await track_out(services, track, job) for track, job in pairs]
    return TrackPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{track_id}", response_model=TrackOut)
async def get_track(track_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> TrackOut:
    track, job = await owned_track(services.sessions, track_id, user.id)
    return await track_out(services, track, job)


@router.get(
    "/{track_id}/download",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    responses={
        status.HTTP_307_TEMPORARY_REDIRECT: {"description": "to the file's signed link"},
        status.HTTP_404_NOT_FOUND: {"description": "no such track, or not in that format"},
        status.HTTP_409_CONFLICT: {"description": "not finished, or still being mastered"},
    },
)
async def download_track(
    track_id: uuid.UUID,
    user: CurrentUser,
    services: ServicesDep,
    wanted_format: Annotated[
        DownloadFormat | None,
        Query(
            alias="format",
            description="flac (lossless master), mp3 (stream) or wav; default: flac",
        ),
    ] = None,
) -> RedirectResponse:
    """The track's audio in one format, as a redirect to a signed, expiring link."""
    track, _ = await owned_track(services.sessions, track_id, user.id)
    if track.status != JobStatus.COMPLETE:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the track is {track.status.value}")
    links = await renditions_out(services.storage, services.settings, track)
    wanted = wanted_format or (
        "flac" if any(r.format == "flac" for r in links) else links[0].format
    )
    found = next((r for r in links if r.format == wanted), None)
    if found is None:
        if track.renditions_state is RenditionsState.PENDING:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"the {wanted} file is being made; try again in a few seconds",
            )
        available = ", ".join(r.format for r in links) or "none"
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"this track has no {wanted} file (available: {available})",
        )
    return RedirectResponse(found.url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
