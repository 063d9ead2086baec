"""Operator tools shared by the CLI and the admin API: stuck jobs and bulk cancel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel
from sqlmodel import col, select
from temporalio.client import Client

from core.contracts import TRACK_WORKFLOW, JobStatus
from core.db import SessionFactory
from core.models import Job, utcnow


class StuckJob(BaseModel):
    job_id: str
    track_id: str
    workflow_id: str
    status: JobStatus
    step: str
    minutes_in_state: float


async def stuck_jobs(
    sessions: SessionFactory, older_than_minutes: float, status: JobStatus | None = None
) -> list[StuckJob]:
    """Jobs that have sat in QUEUED or RENDERING (or the given state) for too long."""
    statuses = [status] if status else [JobStatus.QUEUED, JobStatus.RENDERING]
    cutoff = utcnow() - timedelta(minutes=older_than_minutes)
    async with sessions() as session:
        rows = await session.exec(
            select(Job)
            .where(col(Job.status).in_(statuses), col(Job.updated_at) < cutoff)
            .order_by(col(Job.updated_at))
        )
        jobs = list(rows)
    now = utcnow()
    return [
        StuckJob(
            job_id=str(job.id),
            track_id=str(job.track_id),
            workflow_id=job.workflow_id,
            status=job.status,
            step=job.step,
            minutes_in_state=_minutes_between(job.updated_at, now),
        )
        for job in jobs
    ]


def _minutes_between(earlier: datetime, now: datetime) -> float:
    # SQLite hands back naive datetimes; they were written in UTC.
    aware = earlier if earlier.tzinfo else earlier.replace(tzinfo=UTC)
    return round((now - aware).total_seconds() / 60, 1)


async def cancel_by_query(client: Client, query: str, limit: int = 1000) -> list[str]:
    """Cancel every running track workflow the visibility query matches.

    Each workflow then cancels its provider job, refunds and marks its job CANCELLED, the
    same as a cancel from the API.
    """
    scoped = f"WorkflowType = '{TRACK_WORKFLOW}' AND ExecutionStatus = 'Running' AND ({query})"
    cancelled = []
    async for execution in client.list_workflows(scoped, limit=limit):
        await client.get_workflow_handle(execution.id, run_id=execution.run_id).cancel()
        cancelled.append(execution.id)
    return cancelled
