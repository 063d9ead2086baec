"""Jobs: status, the job log, and cancellation."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from api.deps import CurrentUser, ServicesDep
from api.schemas import JobEventOut, JobOut
from api.views import job_out
from core.logging import get_logger
from domain.tracks import cancel as jobs
from domain.tracks import ownership

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
log = get_logger("soundfoundry.api")


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> JobOut:
    return job_out(services, await ownership.owned_job(services.sessions, job_id, user.id))


@router.get("/{job_id}/logs", response_model=list[JobEventOut])
async def get_job_logs(
    job_id: uuid.UUID, user: CurrentUser, services: ServicesDep
) -> list[JobEventOut]:
    job = await ownership.owned_job(services.sessions, job_id, user.id)
    events = await services.jobs.events(job.id)
    return [JobEventOut.model_validate(e, from_attributes=True) for e in events]


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        status.HTTP_409_CONFLICT: {"description": "The job has already finished."},
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "description": "Temporal is unreachable; nothing was cancelled. Retry after "
            "Retry-After seconds."
        },
    },
)
async def cancel_job(job_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> JobOut:
    """Ask the workflow to cancel; it cancels the provider's job, refunds, marks CANCELLED.

    A job with no workflow (still QUEUED after an unconfirmed start) is cancelled and
    refunded here, since nothing else would.
    """
    return job_out(services, await jobs.cancel_job(services, job_id, user.id))
