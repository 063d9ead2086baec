"""A job's step moves with the job log: the entry that ends one step moves the job to the
next in the same transaction, and a job that has ended keeps the step it ended in — on
SQLite and on Postgres."""

from __future__ import annotations

import uuid

import pytest

from core.contracts import GenerationRequest, JobStatus, Step
from core.models import Job
from domain.users import create_user
from tests.domain.conftest import DomainContext

REQUEST = GenerationRequest(prompt="tape hiss and a slow piano", duration_s=10, seed=3)


async def new_job(ctx: DomainContext) -> uuid.UUID:
    user, _ = await create_user(ctx.sessions, "listener", 10, settings=ctx.settings)
    _, job = await ctx.jobs.create_track(user.id, REQUEST, 2)
    return job.id


async def step_of(ctx: DomainContext, job_id: uuid.UUID) -> tuple[Step, float]:
    async with ctx.sessions() as session:
        job = await session.get(Job, job_id, populate_existing=True)
        assert job is not None
        return job.step, job.progress


async def test_an_entry_moves_the_job_to_the_step_it_leads_to(ctx: DomainContext) -> None:
    job_id = await new_job(ctx)
    await ctx.jobs.add_event(job_id, "audio_checked", "Audio ok", step=(Step.STORING, 0.8))
    assert await step_of(ctx, job_id) == (Step.STORING, 0.8)
    assert [e.event for e in await ctx.jobs.events(job_id)][-1] == "audio_checked"
    # An entry without a step leaves the step alone.
    await ctx.jobs.add_event(job_id, "note", "nothing moves")
    assert await step_of(ctx, job_id) == (Step.STORING, 0.8)


async def test_a_failed_entry_moves_nothing(ctx: DomainContext) -> None:
    job_id = await new_job(ctx)
    before = await step_of(ctx, job_id)
    entries = len(await ctx.jobs.events(job_id))
    # Data that cannot be stored as JSON fails the insert after the step's update ran.
    with pytest.raises(Exception, match="not JSON serializable"):
        await ctx.jobs.add_event(
            job_id, "cover_stored", data={"x": object()}, step=(Step.COVER, 0.9)
        )
    assert await step_of(ctx, job_id) == before, "the step moved without its entry"
    assert len(await ctx.jobs.events(job_id)) == entries


async def test_an_ended_job_keeps_its_step(ctx: DomainContext) -> None:
    job_id = await new_job(ctx)
    await ctx.jobs.finish_unsuccessfully(job_id, JobStatus.CANCELLED, None, "cancelled")
    ended = await step_of(ctx, job_id)
    # A late entry from an activity that was still running when the job was cancelled.
    await ctx.jobs.add_event(job_id, "audio_stored", "late", step=(Step.COVER, 0.9))
    assert await step_of(ctx, job_id) == ended
