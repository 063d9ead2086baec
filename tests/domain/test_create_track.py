"""Creating a track, the use case alone: its refusals write nothing, and a workflow that
cannot be started leaves the job FAILED and refunded with its key released. Temporal is
really down here (nothing listens at its address)."""

from __future__ import annotations

import uuid

import pytest
from sqlmodel import col, func, select

from core.contracts import JobStatus
from core.models import IdempotencyKey, Job, Plan, Track, User
from domain.errors import Forbidden, Invalid, OutOfCredits, Unavailable
from domain.tracks import idempotency
from domain.tracks.create import TrackOrder, create_track, price
from domain.users import create_user
from tests.domain.conftest import DomainContext


async def user_with(ctx: DomainContext, credits: int, plan: Plan = Plan.FREE) -> User:
    user, _ = await create_user(ctx.sessions, "maker", credits, plan, settings=ctx.settings)
    return user


async def tracks_of(ctx: DomainContext, user_id: uuid.UUID) -> int:
    async with ctx.sessions() as session:
        query = select(func.count()).select_from(Track).where(col(Track.user_id) == user_id)
        return int((await session.exec(query)).one())


async def credits_of(ctx: DomainContext, user_id: uuid.UUID) -> int:
    async with ctx.sessions() as session:
        user = await session.get(User, user_id, populate_existing=True)
        assert user is not None
        return user.credits


@pytest.mark.parametrize(
    ("order", "kind", "reason"),
    [
        (TrackOrder(prompt="long", duration_s=120), Forbidden, "plan"),
        (
            TrackOrder(prompt="x", duration_s=30, webhook_url="http://127.0.0.1/h"),
            Invalid,
            "public",
        ),
        (TrackOrder(prompt="x", duration_s=30, series_id=uuid.uuid4()), Forbidden, "series"),
        (TrackOrder(prompt="dear", duration_s=60, has_vocals=True), OutOfCredits, "20 credits"),
    ],
    ids=["over-plan", "private-webhook", "series-off", "too-dear"],
)
async def test_a_refused_track_writes_nothing_and_takes_nothing(
    ctx: DomainContext, order: TrackOrder, kind: type[Exception], reason: str
) -> None:
    user = await user_with(ctx, 10)
    with pytest.raises(kind, match=reason):
        await create_track(ctx, user, order)
    assert await tracks_of(ctx, user.id) == 0
    assert await credits_of(ctx, user.id) == 10


async def test_temporal_down_fails_the_job_refunds_it_and_releases_the_key(
    ctx: DomainContext,
) -> None:
    user = await user_with(ctx, 10)
    order = TrackOrder(prompt="night bus", duration_s=30)
    claim = idempotency.IdempotencyClaim("retry-me", "hash", 201, lambda t, j: {"id": str(t.id)})
    with pytest.raises(Unavailable, match="credits were refunded"):
        await create_track(ctx, user, order, claim)
    async with ctx.sessions() as session:
        (job,) = list(await session.exec(select(Job).where(col(Job.user_id) == user.id)))
        keys = list(await session.exec(select(IdempotencyKey)))
    assert (job.status, job.error_code, job.credits_refunded) == (
        JobStatus.FAILED,
        "workflow_start_failed",
        True,
    )
    assert await credits_of(ctx, user.id) == 10
    assert keys == [], "the key must be free, so the client's retry makes a new track"
    assert price(order) == job.credits_reserved == 5
