"""Jobs: status, the job log, and cancellation."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, status
from sqlmodel import col, select

from api.deps import CurrentUser, Services, ServicesDep
from api.schemas import JobEventOut, JobOut
from core.models import Job

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


async def owned_job(services: Services, job_id: uuid.UUID, user_id: uuid.UUID) -> Job:
    async with services.sessions() as session:
        job = (
            await session.exec(
                select(Job).where(col(Job.id) == job_id, col(Job.user_id) == user_id)
            )
        ).first()
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    return job


def job_out(services: Services, job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        track_id=job.track_id,
        status=job.status,
        step=job.step,
        progress=job.progress,
        attempts=job.attempts,
        credits_reserved=job.credits_reserved,
        credits_refunded=job.credits_refunded,
        error_code=job.error_code,
        error_message=job.error_message,
        workflow_id=job.workflow_id,
        run_id=job.run_id,
        temporal_ui_url=services.temporal.ui_url(job.workflow_id),
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
    )


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> JobOut:
    return job_out(services, await owned_job(services, job_id, user.id))


@router.get("/{job_id}/logs", response_model=list[JobEventOut])
async def get_job_logs(
    job_id: uuid.UUID, user: CurrentUser, services: ServicesDep
) -> list[JobEventOut]:
    job = await owned_job(services, job_id, user.id)
    events = await services.jobs.events(job.id)
    return [JobEventOut.model_validate(e, from_attributes=True) for e in events]


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def cancel_job(job_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> JobOut:
    """Ask the workflow to cancel; it cancels the provider's job, refunds, marks CANCELLED."""
    job = await owned_job(services, job_id, user.id)
    if job.status.is_terminal:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job is already {job.status.value}")
    client = await services.temporal.client()
    await client.get_workflow_handle(job.workflow_id).cancel()
    return job_out(services, job)
