"""Jobs: status, the job log, and cancellation."""

from __future__ import annotations

import uuid
from contextlib import suppress

from fastapi import APIRouter, HTTPException, status
from sqlmodel import col, select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from api.deps import CurrentUser, Services, ServicesDep
from api.schemas import JobEventOut, JobOut
from core.contracts import JobStatus
from core.logging import get_logger
from core.models import Job

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
log = get_logger("soundfoundry.api")

# What a client is told to wait before retrying a cancel while Temporal is unreachable.
TEMPORAL_RETRY_AFTER_S = 5


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
    job = await owned_job(services, job_id, user.id)
    if job.status.is_terminal:
        raise _already_finished(job)
    handle = (await _temporal(services)).get_workflow_handle(job.workflow_id)
    try:
        await handle.cancel()
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise _temporal_unavailable(exc) from exc
        # The workflow finished since the check above, or was never started.
        return await _cancel_without_running_workflow(services, handle, job)
    # Temporal accepts a cancel for a workflow that has just closed: if the job finished
    # in the meantime, the cancel changed nothing and the client must not think it did.
    job = await owned_job(services, job.id, user.id)
    if job.status.is_terminal and job.status is not JobStatus.CANCELLED:
        raise _already_finished(job)
    return job_out(services, job)


async def _cancel_without_running_workflow(
    services: Services, handle: WorkflowHandle, job: Job
) -> JobOut:
    job = await owned_job(services, job.id, job.user_id)
    if job.status.is_terminal:
        raise _already_finished(job)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise _temporal_unavailable(exc) from exc
        return await _cancel_unstarted(services, handle, job)
    if description.status is WorkflowExecutionStatus.RUNNING:
        # Started by the reconciler between the two calls: it can still be cancelled.
        await _cancel_workflow(handle)
        return job_out(services, job)
    # Closed without recording it (terminated, timed out): the reconciler records the
    # outcome and refunds; there is nothing left to cancel.
    raise HTTPException(
        status.HTTP_409_CONFLICT, "job has already finished; its state updates shortly"
    )


async def _cancel_unstarted(services: Services, handle: WorkflowHandle, job: Job) -> JobOut:
    changed = await services.jobs.finish_unsuccessfully(
        job.id, JobStatus.CANCELLED, None, "cancelled before its workflow started"
    )
    job = await owned_job(services, job.id, job.user_id)
    if not changed:  # finished by someone else a moment ago
        raise _already_finished(job)
    await services.jobs.add_event(
        job.id,
        JobStatus.CANCELLED.value.lower(),
        f"Job CANCELLED before its workflow started; {job.credits_reserved} credits refunded",
    )
    log.info("job cancelled without a workflow", job_id=str(job.id))
    # A start racing this cancel (the create request, the reconciler) may have made the
    # workflow since: cancel it too, so it ends instead of rendering a cancelled job.
    with suppress(RPCError):
        await handle.cancel()
    return job_out(services, job)


async def _cancel_workflow(handle: WorkflowHandle) -> None:
    try:
        await handle.cancel()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_409_CONFLICT, "job has already finished") from exc
        raise _temporal_unavailable(exc) from exc


async def _temporal(services: Services) -> Client:
    try:
        return await services.temporal.client()
    except Exception as exc:  # the SDK raises a bare RuntimeError when it cannot connect
        raise _temporal_unavailable(exc) from exc


def _already_finished(job: Job) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, f"job is already {job.status.value}")


def _temporal_unavailable(error: Exception) -> HTTPException:
    log.warning("cancel failed: Temporal unreachable", error=str(error))
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the workflow service is unavailable; nothing was cancelled, retry shortly",
        headers={"Retry-After": str(TEMPORAL_RETRY_AFTER_S)},
    )
