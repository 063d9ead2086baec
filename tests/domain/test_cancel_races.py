"""A cancel racing the steps that pay: every mark that guards a paid action says whether it
happened, and a job that moved (cancelled, refunded, complete) is never submitted,
revived, charged again or delivered — on SQLite and on Postgres."""

from __future__ import annotations

import uuid

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.jobs import JobActivities
from activities.providers.registry import ProviderRegistry
from core.contracts import (
    AudioInfo,
    CheckedAudio,
    CompleteInput,
    ErrorCode,
    GenerationRequest,
    JobStatus,
    StoredAudio,
    StoredTrack,
)
from core.models import Job, Track, User
from domain.tracks.start import track_input
from domain.users import create_user
from tests.domain.conftest import DomainContext

REQUEST = GenerationRequest(prompt="a cancelled lullaby", duration_s=30, seed=5)
COST = 5
# What ActivityEnvironment reports as the workflow run.
RUN = "test-run"
INFO = AudioInfo(duration_s=30.0, sample_rate=44100, channels=2, peak_dbfs=-1, rms_dbfs=-14)


async def balance(ctx: DomainContext, user_id: uuid.UUID) -> int:
    async with ctx.sessions() as session:
        user = await session.get(User, user_id, populate_existing=True)
        assert user is not None
        return user.credits


async def rows(ctx: DomainContext, job_id: uuid.UUID) -> tuple[Job, Track]:
    async with ctx.sessions() as session:
        job = await session.get(Job, job_id, populate_existing=True)
        assert job is not None
        track = await session.get(Track, job.track_id, populate_existing=True)
        assert track is not None
        return job, track


async def queued_job(ctx: DomainContext) -> tuple[uuid.UUID, Track, Job]:
    user, _ = await create_user(ctx.sessions, "listener", 10, settings=ctx.settings)
    track, job = await ctx.jobs.create_track(user.id, REQUEST, COST)
    return user.id, track, job


def activities(ctx: DomainContext) -> JobActivities:
    return JobActivities(ctx.jobs, ProviderRegistry.from_settings(ctx.settings), ctx.settings)


def completion(track: Track, job: Job) -> CompleteInput:
    audio = StoredAudio(
        provider="synth",
        run_id="r-1",
        key=f"tracks/{track.user_id}/{track.id}.wav",
        extension="wav",
        content_type="audio/wav",
        size_bytes=1,
    )
    return CompleteInput(
        track=track_input(track, job),
        stored=stored_for(track),
        checked=CheckedAudio(audio=audio, info=INFO),
    )


def stored_for(track: Track) -> StoredTrack:
    return StoredTrack(
        audio_key=f"tracks/{track.user_id}/{track.id}.wav",
        cover_key="covers/c.svg",
        provider="synth",
    )


@pytest.mark.parametrize("start_recorded_first", [True, False])
async def test_a_cancel_between_the_reconcilers_read_and_its_start_is_final(
    ctx: DomainContext, start_recorded_first: bool
) -> None:
    """The reconciler reads a QUEUED job with no workflow; the user's cancel lands (no
    workflow: cancelled and refunded on the spot); then the reconciler's start goes
    through and the new run plans the track — its start's bookkeeping first, or its
    first activity first."""
    user_id, _, job = await queued_job(ctx)
    assert job.id in [j.id for j, _ in await ctx.jobs.active_jobs()]

    assert await ctx.jobs.finish_unsuccessfully(job.id, JobStatus.CANCELLED, None, "cancelled")
    assert await balance(ctx, user_id) == 10

    if start_recorded_first:
        assert not await ctx.jobs.set_run_id(job.id, "run-late")
    assert not await ctx.jobs.mark_rendering(job.id, "run-late")
    assert not await ctx.jobs.set_run_id(job.id, "run-late")
    fresh, track = await rows(ctx, job.id)
    assert (fresh.status, track.status, fresh.run_id) == (JobStatus.CANCELLED,) * 2 + (None,)
    assert await balance(ctx, user_id) == 10, "a cancelled job was charged again"
    assert not await ctx.jobs.is_active(job.id)


async def test_plan_track_stops_a_run_that_lost_the_race(ctx: DomainContext) -> None:
    """The activity, not only the mark: a run started after the cancel fails with
    JOB_MOVED (non-retryable), which the workflow ends on without paying or telling."""
    user_id, track, job = await queued_job(ctx)
    await ctx.jobs.finish_unsuccessfully(job.id, JobStatus.CANCELLED, None, "cancelled")
    with pytest.raises(ApplicationError) as stopped:
        await ActivityEnvironment().run(activities(ctx).plan_track, track_input(track, job))
    assert (stopped.value.type, stopped.value.non_retryable) == (ErrorCode.JOB_MOVED, True)
    assert await balance(ctx, user_id) == 10


async def test_a_cancel_between_collect_and_complete_keeps_the_track_undelivered(
    ctx: DomainContext,
) -> None:
    user_id, track, job = await queued_job(ctx)
    assert await ctx.jobs.mark_rendering(job.id, RUN)
    # The audio is collected; the cancel commits before complete_job runs.
    assert await ctx.jobs.finish_unsuccessfully(
        job.id, JobStatus.CANCELLED, None, "cancelled by request", RUN
    )
    assert not await ctx.jobs.mark_complete(job.id, stored_for(track), INFO, "audio/wav", RUN)
    with pytest.raises(ApplicationError) as stopped:
        await ActivityEnvironment().run(activities(ctx).complete_job, completion(track, job))
    assert stopped.value.type == ErrorCode.JOB_MOVED
    fresh, fresh_track = await rows(ctx, job.id)
    assert (fresh.status, fresh_track.status) == (JobStatus.CANCELLED, JobStatus.CANCELLED)
    assert fresh_track.audio_key is None, "a cancelled track got its audio"
    assert fresh.credits_refunded and await balance(ctx, user_id) == 10


async def test_a_retried_complete_is_still_complete(ctx: DomainContext) -> None:
    """complete_job retried after its commit (the answer was lost) must not read as a
    moved job, or a finished track would never be announced."""
    user_id, track, job = await queued_job(ctx)
    await ctx.jobs.mark_rendering(job.id, "run-1")
    stored = stored_for(track)
    assert await ctx.jobs.mark_complete(job.id, stored, INFO, "audio/wav", "run-1")
    assert await ctx.jobs.mark_complete(job.id, stored, INFO, "audio/wav", "run-1")
    assert await ctx.jobs.mark_rendering(job.id, "run-1") is False
    assert await balance(ctx, user_id) == 10 - COST


async def test_an_operators_reset_still_revives_a_job_a_run_had_finished(
    ctx: DomainContext,
) -> None:
    user_id, _, job = await queued_job(ctx)
    await ctx.jobs.mark_rendering(job.id, "run-1")
    await ctx.jobs.finish_unsuccessfully(job.id, JobStatus.FAILED, "job_failed", "x", "run-1")
    assert await ctx.jobs.mark_rendering(job.id, "run-2")
    assert await balance(ctx, user_id) == 10 - COST
