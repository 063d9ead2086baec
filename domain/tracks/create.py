"""Use case: create a track — check it, price it, pay for it, and start its workflow.

The credits are reserved and the track and job written in one transaction (with the
Idempotency-Key, when there is one); the workflow is started after that commit. If the
start certainly failed, the job is refunded and the key released (`NotStarted`); if
Temporal cannot say whether it started, the job stays paid and QUEUED and the reconciler
starts it later (`CreatedTrack.confirmed` is False).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from core.contracts import GenerationRequest, JobStatus
from core.logging import get_logger
from core.models import Job, Track, User
from domain import style
from domain.context import Context
from domain.credits import credits_required
from domain.errors import Forbidden, NotFound, Unavailable
from domain.limits.plans import check_duration
from domain.tracks import idempotency
from domain.tracks.start import (
    WorkflowNotStarted,
    WorkflowStartUnknown,
    start_track_workflow,
    track_input,
)
from domain.webhooks.outgoing import check_target, webhook_policy

log = get_logger("soundfoundry.tracks")

SERIES_NOT_FOUND = "series not found"


@dataclass(frozen=True)
class TrackOrder:
    prompt: str
    duration_s: int
    has_vocals: bool = False
    style_strength: float = 0.5
    lyrics: str | None = None
    seed: int | None = None  # None: a random one
    webhook_url: str | None = None
    series_id: uuid.UUID | None = None


@dataclass(frozen=True)
class CreatedTrack:
    track: Track
    job: Job
    cost: int
    # False: Temporal could not confirm the start; the reconciler starts it if needed.
    confirmed: bool = True


class NotStarted(Unavailable):
    """The workflow could not be started: the job is refunded and the key released."""


def price(order: TrackOrder) -> int:
    return credits_required(order.duration_s, order.has_vocals)


async def create_track(
    ctx: Context,
    user: User,
    order: TrackOrder,
    claim: idempotency.IdempotencyClaim | None = None,
) -> CreatedTrack:
    """Raises DurationOverPlan, WebhookTargetRejected, Forbidden/NotFound (series),
    InsufficientCredits, IdempotencyKeyTaken or NotStarted; nothing is kept then."""
    settings = ctx.settings
    # Before anything is reserved or written.
    check_duration(settings, user.plan, order.duration_s)
    cost = price(order)
    request = GenerationRequest(
        prompt=order.prompt,
        duration_s=order.duration_s,
        has_vocals=order.has_vocals,
        style_strength=order.style_strength,
        lyrics=order.lyrics,
        seed=order.seed if order.seed is not None else secrets.randbelow(2**31),
    )
    if order.webhook_url:
        await check_target(order.webhook_url, webhook_policy(settings))
    series_id = await series_for_new_track(ctx, user.id, order.series_id)
    track, job = await ctx.jobs.create_track(
        user.id,
        request,
        cost,
        webhook_url=order.webhook_url,
        series_id=series_id,
        idempotency=claim,
    )
    confirmed = await _start(ctx, user.id, claim, track, job)
    log.info("track created", track_id=str(track.id), job_id=str(job.id), credits=cost)
    await _record_unlocks(ctx, user.id)
    return CreatedTrack(track, job, cost, confirmed)


async def series_for_new_track(
    ctx: Context, user_id: uuid.UUID, series_id: uuid.UUID | None
) -> uuid.UUID | None:
    """The series a new track joins: the one asked for (it must be the user's), else the
    user's default series; None while series are off."""
    if not ctx.settings.style_series_enabled:
        if series_id is not None:
            raise Forbidden(style.SERIES_OFF)
        return None
    if series_id is None:
        return await style.default_series_id(ctx.sessions, user_id)
    if await style.owned_series(ctx.sessions, user_id, series_id) is None:
        raise NotFound(SERIES_NOT_FOUND)
    return series_id


async def _start(
    ctx: Context,
    user_id: uuid.UUID,
    claim: idempotency.IdempotencyClaim | None,
    track: Track,
    job: Job,
) -> bool:
    try:
        client = await ctx.temporal.client()
    except Exception as exc:
        # Temporal was never reached, so nothing started.
        raise await _not_started(ctx, user_id, claim, job, exc) from exc
    try:
        await start_track_workflow(client, ctx.jobs, ctx.settings, job, track_input(track, job))
    except WorkflowNotStarted as exc:
        raise await _not_started(ctx, user_id, claim, job, exc) from exc
    except WorkflowStartUnknown:
        await _start_unconfirmed(ctx, user_id, claim, job)
        return False
    return True


async def _not_started(
    ctx: Context,
    user_id: uuid.UUID,
    claim: idempotency.IdempotencyClaim | None,
    job: Job,
    error: Exception,
) -> NotStarted:
    """Nothing will run this job: refund it, and release the key so a retry makes a new
    track (the one it names is FAILED)."""
    await ctx.jobs.finish_unsuccessfully(
        job.id, JobStatus.FAILED, "workflow_start_failed", str(error)
    )
    if claim is not None:
        await idempotency.forget(ctx.sessions, user_id, claim.key)
    log.error("workflow start failed", job_id=str(job.id), error=str(error))
    return NotStarted("the job could not be started; your credits were refunded, please retry")


async def _start_unconfirmed(
    ctx: Context, user_id: uuid.UUID, claim: idempotency.IdempotencyClaim | None, job: Job
) -> None:
    """The start may or may not have happened and Temporal cannot say which.

    Refunding now could refund a job that runs; failing would invite a second track. The
    job stays QUEUED and charged, and the reconciler starts its workflow if it has none
    after `reconcile_start_after_s`. The key keeps naming this track and is marked
    unconfirmed, so a retry replays that answer and neither creates nor charges.
    """
    if claim is not None:
        await idempotency.mark_unconfirmed(ctx.sessions, user_id, claim)
    await ctx.jobs.add_event(
        job.id,
        "start_unconfirmed",
        "Temporal could not confirm that the workflow started; "
        "the reconciler starts it if it did not",
        level="warning",
    )


async def _record_unlocks(ctx: Context, user_id: uuid.UUID) -> None:
    """Record the unlocks the user's completed tracks have earned (STYLE_UNLOCKS_ENABLED).

    Never fails the track: the unlocks are recomputed on the next track or read.
    """
    if not ctx.settings.style_unlocks_enabled:
        return
    try:
        await style.sync_unlocks(ctx.sessions, user_id)
    except Exception:
        log.exception("style unlocks not recorded", user_id=str(user_id))
