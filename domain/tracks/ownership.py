"""A user's own tracks and jobs: a page of them, or one by id. An id that is not the
user's is NotFound like one that does not exist, so it tells nobody else anything."""

from __future__ import annotations

import uuid

from sqlalchemy import func
from sqlmodel import col, select

from core.db import SessionFactory
from core.models import Job, Track
from domain.errors import NotFound

TRACK_NOT_FOUND = "track not found"
JOB_NOT_FOUND = "job not found"


async def owned_track(
    sessions: SessionFactory, track_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[Track, Job]:
    """The track and its job."""
    async with sessions() as session:
        row = (
            await session.exec(
                select(Track, Job)
                .join(Job, col(Job.track_id) == col(Track.id))
                .where(col(Track.id) == track_id, col(Track.user_id) == user_id)
            )
        ).first()
    if row is None:
        raise NotFound(TRACK_NOT_FOUND)
    return row[0], row[1]


async def owned_job(sessions: SessionFactory, job_id: uuid.UUID, user_id: uuid.UUID) -> Job:
    async with sessions() as session:
        job = (
            await session.exec(
                select(Job).where(col(Job.id) == job_id, col(Job.user_id) == user_id)
            )
        ).first()
    if job is None:
        raise NotFound(JOB_NOT_FOUND)
    return job


async def user_tracks(
    sessions: SessionFactory, user_id: uuid.UUID, limit: int, offset: int
) -> tuple[list[tuple[Track, Job]], int]:
    """One page of the user's tracks with their jobs, newest first, and the total."""
    async with sessions() as session:
        total = (
            await session.exec(
                select(func.count()).select_from(Track).where(col(Track.user_id) == user_id)
            )
        ).one()
        rows = await session.exec(
            select(Track, Job)
            .join(Job, col(Job.track_id) == col(Track.id))
            .where(col(Track.user_id) == user_id)
            .order_by(col(Track.created_at).desc(), col(Track.id))
            .limit(limit)
            .offset(offset)
        )
        return [(track, job) for track, job in rows], total
