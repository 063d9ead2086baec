"""Start a track's workflow: the one way, for the API's create and the reconciler's restart.

Both start the same workflow id (`job.workflow_id`) with `USE_EXISTING`, so a second start
(a client retry, the reconciler racing the API) joins the run that exists instead of
making another.

A start call that raises does not prove that nothing started: the server may have
created the workflow and the answer been lost on the way back. So a failed start is
settled by asking Temporal about the workflow id:

- it exists: the start happened; its run id is recorded and the start counts as done;
- NOT_FOUND: nothing started and nothing will run the job (`WorkflowNotStarted`);
- the question fails too: nobody can tell yet (`WorkflowStartUnknown`). The job stays
  QUEUED, and the reconciler starts it if it has no workflow after
  `reconcile_start_after_s`.

What this cannot see is a start the server is still working on when it answers NOT_FOUND
(the call failed before the server finished creating the workflow, e.g. a client-side
deadline); that window is far narrower than a lost answer.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import (
    JOB_STATUS_ATTRIBUTE,
    TRACK_ID_ATTRIBUTE,
    TRACK_WORKFLOW,
    USER_ID_ATTRIBUTE,
    GenerationRequest,
    JobStatus,
    TrackInput,
)
from core.logging import get_logger
from core.models import Job, Track
from core.settings import Settings
from domain.tracks.jobs import JobStore

log = get_logger("soundfoundry.workflow_start")

# Bounds the question "did it start?" so an unreachable Temporal gets a prompt answer
# rather than one after the SDK's own retries.
DESCRIBE_TIMEOUT = timedelta(seconds=5)


class WorkflowNotStarted(Exception):
    """The start failed and Temporal has no workflow with this id: nothing runs the job."""


class WorkflowStartUnknown(Exception):
    """The start failed and Temporal could not be asked whether it happened."""


def track_input(track: Track, job: Job) -> TrackInput:
    """The workflow's input, from the rows `JobStore.create_track` wrote."""
    return TrackInput(
        track_id=track.id,
        job_id=job.id,
        user_id=job.user_id,
        request=GenerationRequest(
            prompt=track.prompt,
            duration_s=track.duration_s,
            has_vocals=track.has_vocals,
            style_strength=track.style_strength,
            lyrics=track.lyrics,
            seed=track.seed,
        ),
        webhook_url=track.webhook_url,
    )


def search_attributes(
    settings: Settings, workflow_input: TrackInput
) -> TypedSearchAttributes | None:
    if not settings.search_attributes_enabled:
        # Unregistered attributes would make the start itself fail.
        return None
    return TypedSearchAttributes(
        [
            SearchAttributePair(TRACK_ID_ATTRIBUTE, str(workflow_input.track_id)),
            SearchAttributePair(USER_ID_ATTRIBUTE, str(workflow_input.user_id)),
            SearchAttributePair(JOB_STATUS_ATTRIBUTE, JobStatus.QUEUED.value),
        ]
    )


async def start_track_workflow(
    client: Client,
    store: JobStore,
    settings: Settings,
    job: Job,
    workflow_input: TrackInput,
) -> str:
    """Start (or join) the job's workflow, record its run id on the job and return it.

    Raises WorkflowNotStarted when it certainly did not start, and WorkflowStartUnknown
    when that cannot be known; the job is left as it was in both cases.
    """
    try:
        handle = await client.start_workflow(
            TRACK_WORKFLOW,
            workflow_input,
            id=job.workflow_id,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=search_attributes(settings, workflow_input),
        )
        run_id = handle.result_run_id or ""
    except Exception as exc:
        run_id = await _run_id_after_failed_start(client, job, exc)
    if run_id and not await store.set_run_id(job.id, run_id):
        # Cancelled between the caller's read and this start: the run finds the job
        # ended at its first step and stops there, paying nothing.
        log.warning("workflow started for a job that has ended", job_id=str(job.id))
    return run_id


async def _run_id_after_failed_start(client: Client, job: Job, error: Exception) -> str:
    try:
        description = await client.get_workflow_handle(job.workflow_id).describe(
            rpc_timeout=DESCRIBE_TIMEOUT
        )
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise WorkflowNotStarted(str(error)) from error
        raise _unknown(job, error, exc) from exc
    except Exception as exc:
        raise _unknown(job, error, exc) from exc
    # The server took the start; only its answer was lost.
    log.warning(
        "workflow start answered with an error but the workflow exists",
        job_id=str(job.id),
        run_id=description.run_id,
        error=str(error),
    )
    return description.run_id


def _unknown(job: Job, start_error: Exception, describe_error: Exception) -> WorkflowStartUnknown:
    log.error(
        "workflow start unconfirmed",
        job_id=str(job.id),
        error=str(start_error),
        describe_error=str(describe_error),
    )
    return WorkflowStartUnknown(f"{start_error}; and then: {describe_error}")
