"""Operator tools shared by the CLI and the admin API: stuck jobs and bulk cancel."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlmodel import col, select
from temporalio.client import Client, WorkflowExecutionStatus

from core.contracts import TRACK_WORKFLOW, JobStatus
from core.db import SessionFactory
from core.models import Job, utcnow
from core.settings import KNOWN_PROVIDERS


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


MAX_OLDER_THAN_MINUTES = 60 * 24 * 365


class CancelFilter(BaseModel):
    """Which running track workflows a bulk cancel reaches: every given criterion must hold.

    Only validated values (an allowed status, a known provider, a UUID, a whole number of
    minutes) ever reach the Temporal query, so no value can widen its scope.
    """

    model_config = ConfigDict(extra="forbid")

    status: Literal["QUEUED", "RENDERING"] | None = Field(
        default=None, description="the job's JobStatus search attribute"
    )
    provider: str | None = Field(
        default=None, description=f"the provider the job is on: one of {list(KNOWN_PROVIDERS)}"
    )
    user_id: uuid.UUID | None = Field(default=None, description="the job owner's id")
    older_than_minutes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_OLDER_THAN_MINUTES,
        description="the workflow started at least this many minutes ago",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_raw_query(cls, data: Any) -> Any:
        if isinstance(data, dict) and "query" in data:
            raise ValueError(
                "raw visibility queries are no longer accepted; filter with status "
                "(QUEUED or RENDERING), provider, user_id and older_than_minutes"
            )
        return data

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str | None) -> str | None:
        if value is not None and value not in KNOWN_PROVIDERS:
            raise ValueError(f"unknown provider; known: {list(KNOWN_PROVIDERS)}")
        return value

    @model_validator(mode="after")
    def _at_least_one(self) -> CancelFilter:
        criteria = (self.status, self.provider, self.user_id, self.older_than_minutes)
        if all(value is None for value in criteria):
            raise ValueError(
                "give at least one of status, provider, user_id, older_than_minutes "
                "(an empty filter would cancel every running track)"
            )
        return self


def _literal(value: str) -> str:
    # Values are validated before they get here; refusing quotes and backslashes as well
    # means a mistake in that validation still cannot end the string early.
    if any(char in value for char in "'\"\\"):
        raise ValueError("a filter value may not contain quotes or backslashes")
    return f"'{value}'"


def visibility_query(criteria: CancelFilter, now: datetime | None = None) -> str:
    """The Temporal list filter for `criteria`, always scoped to running track workflows."""
    clauses = [f"WorkflowType = {_literal(TRACK_WORKFLOW)}", "ExecutionStatus = 'Running'"]
    if criteria.status is not None:
        clauses.append(f"JobStatus = {_literal(criteria.status)}")
    if criteria.provider is not None:
        clauses.append(f"Provider = {_literal(criteria.provider)}")
    if criteria.user_id is not None:
        clauses.append(f"UserId = {_literal(str(criteria.user_id))}")
    if criteria.older_than_minutes is not None:
        cutoff = (now or utcnow()) - timedelta(minutes=criteria.older_than_minutes)
        clauses.append(f"StartTime < {_literal(cutoff.strftime('%Y-%m-%dT%H:%M:%SZ'))}")
    return " AND ".join(clauses)


async def cancel_matching(client: Client, criteria: CancelFilter, limit: int = 1000) -> list[str]:
    """Cancel every running track workflow that matches `criteria`.

    Each workflow then cancels its provider job, refunds and marks its job CANCELLED, the
    same as a cancel from the API.
    """
    cancelled = []
    async for execution in client.list_workflows(visibility_query(criteria), limit=limit):
        # Belt and braces: whatever the query matched, only running track workflows go.
        if (
            execution.workflow_type != TRACK_WORKFLOW
            or execution.status is not WorkflowExecutionStatus.RUNNING
        ):
            continue
        await client.get_workflow_handle(execution.id, run_id=execution.run_id).cancel()
        cancelled.append(execution.id)
    return cancelled
