"""Credits: a track's price, one reservation per job, at most one refund, and an
operator's reset charging a revived job again — on SQLite and on Postgres."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from core.contracts import AudioInfo, GenerationRequest, JobStatus, StoredTrack
from core.models import Job, User
from domain.credits import InsufficientCredits, credits_required, grant_credits
from domain.errors import NotFound, OutOfCredits
from domain.users import UserNotFound, create_user
from tests.domain.conftest import DomainContext

REQUEST = GenerationRequest(prompt="rain on a tin roof", duration_s=30, seed=7)


async def balance(ctx: DomainContext, user_id: uuid.UUID) -> int:
    async with ctx.sessions() as session:
        user = await session.get(User, user_id, populate_existing=True)
        assert user is not None
        return user.credits


async def new_user(ctx: DomainContext, credits: int) -> uuid.UUID:
    user, _ = await create_user(ctx.sessions, "listener", credits, settings=ctx.settings)
    return user.id


@pytest.mark.parametrize(
    ("duration_s", "vocals", "cost"),
    [(30, False, 5), (60, False, 10), (30, True, 10), (31, False, 6), (5, False, 1)],
)
def test_price_is_five_credits_per_started_half_minute_doubled_for_vocals(
    duration_s: int, vocals: bool, cost: int
) -> None:
    assert credits_required(duration_s, vocals) == cost


async def test_concurrent_tracks_never_spend_the_same_credits(ctx: DomainContext) -> None:
    user_id = await new_user(ctx, 12)
    attempts = await asyncio.gather(
        *(ctx.jobs.create_track(user_id, REQUEST, 5) for _ in range(5)),
        return_exceptions=True,
    )
    made = [a for a in attempts if not isinstance(a, BaseException)]
    refused = [a for a in attempts if isinstance(a, InsufficientCredits)]
    assert (len(made), len(refused)) == (2, 3), attempts
    # The 2 left never pay for a third track, and the balance never goes below zero.
    assert await balance(ctx, user_id) == 2


async def test_an_empty_balance_makes_nothing_whatever_the_cost(ctx: DomainContext) -> None:
    user_id = await new_user(ctx, 0)
    with pytest.raises(OutOfCredits, match="add credits"):
        await ctx.jobs.create_track(user_id, REQUEST, 0)
    assert await ctx.jobs.active_jobs() == []


async def test_a_failed_job_is_refunded_exactly_once(ctx: DomainContext) -> None:
    user_id = await new_user(ctx, 12)
    _, job = await ctx.jobs.create_track(user_id, REQUEST, 5)
    assert await balance(ctx, user_id) == 7
    first = await ctx.jobs.finish_unsuccessfully(job.id, JobStatus.FAILED, "job_failed", "x")
    # The workflow's retry, the reconciler and a cancel all arrive after it.
    again = await asyncio.gather(
        ctx.jobs.finish_unsuccessfully(job.id, JobStatus.FAILED, "job_failed", "x"),
        ctx.jobs.finish_unsuccessfully(job.id, JobStatus.CANCELLED, None, "late cancel"),
        ctx.jobs.finish_unsuccessfully(job.id, JobStatus.TERMINATED, None, "reconciled"),
    )
    assert first and not any(again)
    assert await balance(ctx, user_id) == 12


async def test_a_reset_run_that_fails_again_refunds_nothing_more(ctx: DomainContext) -> None:
    user_id = await new_user(ctx, 5)
    _, job = await ctx.jobs.create_track(user_id, REQUEST, 5)
    await ctx.jobs.finish_unsuccessfully(job.id, JobStatus.FAILED, "job_failed", "x", "run-1")
    # A newer run (an operator's reset) fails before it got to charge the job again.
    assert await ctx.jobs.finish_unsuccessfully(
        job.id, JobStatus.FAILED, "job_failed", "y", "run-2"
    )
    assert await balance(ctx, user_id) == 5


async def test_a_reset_that_revives_a_refunded_job_charges_it_again(ctx: DomainContext) -> None:
    user_id = await new_user(ctx, 5)
    _, job = await ctx.jobs.create_track(user_id, REQUEST, 5)
    await ctx.jobs.mark_rendering(job.id, "run-1")
    await ctx.jobs.finish_unsuccessfully(job.id, JobStatus.FAILED, "job_failed", "x", "run-1")
    assert await balance(ctx, user_id) == 5
    # `temporal workflow reset` starts a new run of the same job.
    assert await ctx.jobs.mark_rendering(job.id, "run-2")
    assert await balance(ctx, user_id) == 0


async def test_a_revived_job_the_user_cannot_pay_for_changes_nothing(ctx: DomainContext) -> None:
    user_id = await new_user(ctx, 5)
    _, job = await ctx.jobs.create_track(user_id, REQUEST, 5)
    await ctx.jobs.finish_unsuccessfully(job.id, JobStatus.FAILED, "job_failed", "x", "run-1")
    await ctx.jobs.create_track(user_id, REQUEST, 5)  # the refund is spent elsewhere
    with pytest.raises(InsufficientCredits):
        await ctx.jobs.mark_rendering(job.id, "run-2")
    async with ctx.sessions() as session:
        fresh = await session.get(Job, job.id)
        assert fresh is not None
        assert (fresh.status, fresh.credits_refunded) == (JobStatus.FAILED, True)
    assert await balance(ctx, user_id) == 0


async def test_a_reset_that_delivers_a_refunded_track_is_paid_even_into_debt(
    ctx: DomainContext,
) -> None:
    user_id = await new_user(ctx, 5)
    track, job = await ctx.jobs.create_track(user_id, REQUEST, 5)
    await ctx.jobs.finish_unsuccessfully(job.id, JobStatus.FAILED, "job_failed", "x", "run-1")
    await ctx.jobs.create_track(user_id, REQUEST, 5)
    stored = StoredTrack(
        audio_key=f"tracks/{user_id}/{track.id}.wav", cover_key="covers/c.svg", provider="synth"
    )
    info = AudioInfo(duration_s=30.0, sample_rate=44100, channels=2, peak_dbfs=-1, rms_dbfs=-14)
    assert await ctx.jobs.mark_complete(job.id, stored, info, "audio/wav", "run-2")
    assert await balance(ctx, user_id) == -5


async def test_granting_credits_to_nobody_is_not_found(ctx: DomainContext) -> None:
    with pytest.raises(UserNotFound) as refused:
        await grant_credits(ctx.sessions, uuid.uuid4(), 10)
    assert isinstance(refused.value, NotFound)
    user_id = await new_user(ctx, 1)
    assert (await grant_credits(ctx.sessions, user_id, 10)).credits == 11
