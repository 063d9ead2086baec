"""Tracks: create (starts the workflow), read with signed links, list."""

from __future__ import annotations

import secrets
import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import func, update
from sqlmodel import col, select

from api.deps import CurrentUser, Services, ServicesDep
from api.downloads import DownloadFormat, download_name, renditions_out
from api.idempotency import IdempotencyKeyHeader, claim, replay
from api.rate_limit import rate_limit
from api.routes.style import after_track_created, series_for_new_track
from api.schemas import (
    MAX_PAGE_LIMIT,
    MAX_PAGE_OFFSET,
    TrackCreate,
    TrackCreated,
    TrackOut,
    TrackPage,
)
from core.contracts import GenerationRequest, JobStatus, RenditionsState
from core.db import transaction
from core.logging import get_logger
from core.models import IdempotencyKey, Job, Track, User
from domain.credits import InsufficientCredits, credits_required
from domain.limits.plans import DurationOverPlan, check_duration
from domain.tracks.idempotency import IdempotencyKeyTaken, request_hash
from domain.tracks.idempotency import forget as forget_idempotency_key
from domain.tracks.start import (
    WorkflowNotStarted,
    WorkflowStartUnknown,
    start_track_workflow,
    track_input,
)
from domain.webhooks.outgoing import WebhookTargetRejected, check_target

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
            "and the Idempotency-Key released, so a retry makes a new track.",
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
    try:
        # Before anything is reserved or written.
        check_duration(services.settings, user.plan, body.duration_s)
    except DurationOverPlan as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    cost = credits_required(body.duration_s, body.has_vocals)
    request = GenerationRequest(
        prompt=body.prompt,
        duration_s=body.duration_s,
        has_vocals=body.has_vocals,
        style_strength=body.style_strength,
        lyrics=body.lyrics,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
    )
    if body.webhook_url:
        try:
            await check_target(body.webhook_url, services.settings.webhook_allowed_hosts)
        except WebhookTargetRejected as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    # 403 while series are off, 404 for a series that is not the user's.
    series_id = await series_for_new_track(services, user.id, body.series_id)
    try:
        track, job = await services.jobs.create_track(
            user.id,
            request,
            cost,
            webhook_url=body.webhook_url,
            series_id=series_id,
            idempotency=claim(
                idempotency_key,
                body_hash,
                status.HTTP_201_CREATED,
                lambda track, job: _created(track, job, cost).model_dump(mode="json"),
            ),
        )
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
        raise HTTPException(status.HTTP_402_PAYMENT_REQUIRED, str(exc)) from exc

    created = _created(track, job, cost)
    answer: TrackCreated | JSONResponse = created
    try:
        client = await services.temporal.client()
    except Exception as exc:
        # Temporal was never reached, so nothing started.
        raise await _not_started(services, user.id, idempotency_key, job, exc) from exc
    try:
        await start_track_workflow(
            client, services.jobs, services.settings, job, track_input(track, job)
        )
    except WorkflowNotStarted as exc:
        raise await _not_started(services, user.id, idempotency_key, job, exc) from exc
    except WorkflowStartUnknown:
        answer = await _start_unconfirmed(services, user.id, idempotency_key, created)
    log.info("track created", track_id=str(track.id), job_id=str(job.id), credits=cost)
    await after_track_created(services, user.id)  # style unlocks, when turned on
    return answer


def _created(track: Track, job: Job, cost: int) -> TrackCreated:
    return TrackCreated(
        track_id=track.id,
        job_id=job.id,
        credits_required=cost,
        status=JobStatus.QUEUED,
        workflow_id=job.workflow_id,
    )


async def _not_started(
    services: Services,
    user_id: uuid.UUID,
    idempotency_key: str | None,
    job: Job,
    error: Exception,
) -> HTTPException:
    """Nothing will run this job: refund it, and release the key so a retry makes a new
    track (the one it names is FAILED)."""
    await services.jobs.finish_unsuccessfully(
        job.id, JobStatus.FAILED, "workflow_start_failed", str(error)
    )
    if idempotency_key is not None:
        await forget_idempotency_key(services.sessions, user_id, idempotency_key)
    log.error("workflow start failed", job_id=str(job.id), error=str(error))
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the job could not be started; your credits were refunded, please retry",
    )


async def _start_unconfirmed(
    services: Services, user_id: uuid.UUID, idempotency_key: str | None, created: TrackCreated
) -> JSONResponse:
    """The start may or may not have happened and Temporal cannot say which: 202.

    Refunding now could refund a job that runs; answering 503 would invite a second track.
    The job stays QUEUED and charged, and the reconciler starts its workflow if it has none
    after `reconcile_start_after_s`. The key keeps naming this track and now replays this
    202 (it was stored as 201 with the track), so a retry neither creates nor charges; a
    duplicate that arrived while the start was in flight got that 201, for the same track.
    """
    if idempotency_key is not None:
        async with transaction(services.sessions) as session:
            await session.exec(
                update(IdempotencyKey)
                .where(
                    col(IdempotencyKey.user_id) == user_id,
                    col(IdempotencyKey.key) == idempotency_key,
                )
                .values(status_code=status.HTTP_202_ACCEPTED)
            )
    await services.jobs.add_event(
        created.job_id,
        "start_unconfirmed",
        "Temporal could not confirm that the workflow started; "
        "the reconciler starts it if it did not",
        level="warning",
    )
    return JSONResponse(created.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED)


@router.get("", response_model=TrackPage)
async def list_tracks(
    user: CurrentUser,
    services: ServicesDep,
    limit: int = Query(default=20, ge=1, le=MAX_PAGE_LIMIT),
    offset: int = Query(default=0, ge=0, le=MAX_PAGE_OFFSET),
) -> TrackPage:
    async with services.sessions() as session:
        total = (
            await session.exec(
                select(func.count()).select_from(Track).where(col(Track.user_id) == user.id)
            )
        ).one()
        rows = await session.exec(
            select(Track, Job)
            .join(Job, col(Job.track_id) == col(Track.id))
            .where(col(Track.user_id) == user.id)
            .order_by(col(Track.created_at).desc(), col(Track.id))
            .limit(limit)
            .offset(offset)
        )
        pairs = list(rows)
    items = [await track_out(services, track, job) for track, job in pairs]
    return TrackPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{track_id}", response_model=TrackOut)
async def get_track(track_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> TrackOut:
    track, job = await owned_track(services, track_id, user.id)
    return await track_out(services, track, job)


async def owned_track(
    services: Services, track_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[Track, Job]:
    """The track and its job, or 404 — also for other users' tracks, so ids leak nothing."""
    async with services.sessions() as session:
        row = (
            await session.exec(
                select(Track, Job)
                .join(Job, col(Job.track_id) == col(Track.id))
                .where(col(Track.id) == track_id, col(Track.user_id) == user_id)
            )
        ).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "track not found")
    return row[0], row[1]


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
    track, _ = await owned_track(services, track_id, user.id)
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


async def track_out(services: Services, track: Track, job: Job) -> TrackOut:
    ttl = services.settings.signed_url_ttl_s
    file_url = cover_url = None
    audio = None
    renditions = []
    if track.status == JobStatus.COMPLETE and track.audio_key:
        extension = track.audio_key.rsplit(".", 1)[-1]
        file_url = await services.storage.signed_url(
            track.audio_key, ttl, download_name(track, extension)
        )
        renditions = await renditions_out(services.storage, services.settings, track)
        audio = {
            "duration_s": track.audio_duration_s,
            "sample_rate": track.sample_rate,
            "channels": track.channels,
            "peak_dbfs": track.peak_dbfs,
            "rms_dbfs": track.rms_dbfs,
            "loudness_lufs": track.loudness_lufs,
            "true_peak_dbtp": track.true_peak_dbtp,
            "bpm": track.bpm,
            "content_type": track.audio_content_type,
            "peaks": track.peaks,
        }
    if track.cover_key:
        cover_url = await services.storage.signed_url(track.cover_key, ttl)
    return TrackOut(
        id=track.id,
        job_id=job.id,
        status=track.status,
        prompt=track.prompt,
        duration_s=track.duration_s,
        has_vocals=track.has_vocals,
        style_strength=track.style_strength,
        lyrics=track.lyrics,
        seed=track.seed,
        provider=track.provider,
        visual_version=track.visual_version,
        created_at=track.created_at,
        file_url=file_url,
        renditions=renditions,
        renditions_state=track.renditions_state,
        cover_url=cover_url,
        audio=audio,
        cover_source=track.cover_source,
        series_id=track.series_id,
    )
