"""Use case: cancel a job.

The workflow is asked to cancel; it cancels the provider's job, refunds and records
CANCELLED. A job with no workflow (still QUEUED after an unconfirmed start) is cancelled
and refunded here, since nothing else would.
"""

from __future__ import annotations

import uuid
from contextlib import suppress

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import JobStatus
from core.logging import get_logger
from core.models import Job
from domain.context import Context
from domain.errors import Conflict, Unavailable
from domain.tracks.ownership import owned_job

log = get_logger("soundfoundry.tracks")

# What a client is told to wait before retrying a cancel while Temporal is unreachable.
TEMPORAL_RETRY_AFTER_S = 5


class AlreadyFinished(Conflict):
    def __init__(self, job: Job | None = None, message: str | None = None) -> None:
        super().__init__(message or f"job is already {job.status.value if job else 'finished'}")


async def cancel_job(ctx: Context, job_id: uuid.UUID, user_id: uuid.UUID) -> Job:
    """The job as it stands after the request: CANCELLED, or on its way there.

    Raises NotFound, AlreadyFinished (the job ended first: nothing was cancelled) or
    Unavailable (Temporal out of reach: nothing was cancelled, retry).
    """
    job = await owned_job(ctx.sessions, job_id, user_id)
    if job.status.is_terminal:
        raise AlreadyFinished(job)
    handle = (await _temporal(ctx)).get_workflow_handle(job.workflow_id)
    try:
        await handle.cancel()
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise _temporal_unavailable(exc) from exc
        # The workflow finished since the check above, or was never started.
        return await _cancel_without_running_workflow(ctx, handle, job)
    # Temporal accepts a cancel for a workflow that has just closed: if the job finished
    # in the meantime, the cancel changed nothing and the client must not think it did.
    job = await owned_job(ctx.sessions, job.id, user_id)
    if job.status.is_terminal and job.status is not JobStatus.CANCELLED:
        raise AlreadyFinished(job)
    return job


async def _cancel_without_running_workflow(ctx: Context, handle: WorkflowHandle, job: Job) -> Job:
    job = await owned_job(ctx.sessions, job.id, job.user_id)
    if job.status.is_terminal:
        raise AlreadyFinished(job)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise _temporal_unavailable(exc) from exc
        return await _cancel_unstarted(ctx, handle, job)
    if description.status is WorkflowExecutionStatus.RUNNING:
        # Started by the reconciler between the two calls: it can still be cancelled.
        await _cancel_workflow(handle)
        return job
    # Closed without recording it (terminated, timed out): the reconciler records the
    # outcome and refunds; there is nothing left to cancel.
    raise AlreadyFinished(message="job has already finished; its state updates shortly")


async def _cancel_unstarted(ctx: Context, handle: WorkflowHandle, job: Job) -> Job:
    changed = await ctx.jobs.finish_unsuccessfully(
        job.id, JobStatus.CANCELLED, None, "cancelled before its workflow started"
    )
    job = await owned_job(ctx.sessions, job.id, job.user_id)
    if not changed:  # finished by someone else a moment ago
        raise AlreadyFinished(job)
    await ctx.jobs.add_event(
        job.id,
        JobStatus.CANCELLED.value.lower(),
        f"Job CANCELLED before its workflow started; {job.credits_reserved} credits refunded",
    )
    log.info("job cancelled without a workflow", job_id=str(job.id))
    # A start racing this cancel (the create request, the reconciler) may have made the
    # workflow since: cancel it too, so it ends instead of rendering a cancelled job.
    with suppress(RPCError):
        await handle.cancel()
    return job


async def _cancel_workflow(handle: WorkflowHandle) -> None:
    try:
        await handle.cancel()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise AlreadyFinished(message="job has already finished") from exc
        raise _temporal_unavailable(exc) from exc


async def _temporal(ctx: Context) -> Client:
    try:
        return await ctx.temporal.client()
    except Exception as exc:  # the SDK raises a bare RuntimeError when it cannot connect
        raise _temporal_unavailable(exc) from exc


def _temporal_unavailable(error: Exception) -> Unavailable:
    log.warning("cancel failed: Temporal unreachable", error=str(error))
    return Unavailable(
        "the workflow service is unavailable; nothing was cancelled, retry shortly",
        retry_after_s=TEMPORAL_RETRY_AFTER_S,
    )
