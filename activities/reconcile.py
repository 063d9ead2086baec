"""Keep the database true when workflows close without running workflow code.

`temporal workflow terminate` and execution timeouts end a run without letting it mark
its job; a job whose API request died between the database commit and the workflow start
has no run at all. A Temporal Schedule runs this every few seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import ErrorCode, JobStatus, ReconcileReport
from core.logging import get_logger
from core.models import Job, Track
from core.settings import Settings
from domain.tracks.jobs import JobStore
from domain.tracks.start import (
    WorkflowNotStarted,
    WorkflowStartUnknown,
    start_track_workflow,
    track_input,
)

log = get_logger("soundfoundry.reconcile")

# What the database should say for a workflow that closed on its own terms but whose
# job is still active (its final activity never ran).
CLOSED = {
    WorkflowExecutionStatus.TERMINATED: (JobStatus.TERMINATED, ErrorCode.WORKFLOW_TERMINATED),
    WorkflowExecutionStatus.TIMED_OUT: (JobStatus.TERMINATED, ErrorCode.WORKFLOW_TIMED_OUT),
    WorkflowExecutionStatus.CANCELED: (JobStatus.CANCELLED, None),
    WorkflowExecutionStatus.FAILED: (JobStatus.FAILED, ErrorCode.WORKFLOW_FAILED),
}


class ReconcileActivities:
    def __init__(self, store: JobStore, client: Client, settings: Settings) -> None:
        self.store = store
        self.client = client
        self.settings = settings

    @activity.defn(name="reconcile_jobs")
    async def reconcile_jobs(self) -> ReconcileReport:
        report = ReconcileReport()
        for job, track in await self.store.active_jobs():
            report.checked += 1
            activity.heartbeat(report.checked)
            try:
                description = await self.client.get_workflow_handle(job.workflow_id).describe()
            except RPCError as exc:
                if exc.status is RPCStatusCode.NOT_FOUND and await self._restart_if_lost(
                    job, track
                ):
                    report.restarted.append(str(job.id))
                continue
            run_status = description.status
            closed = CLOSED.get(run_status) if run_status else None
            if run_status is None or closed is None:
                continue
            status, code = closed
            message = f"workflow {run_status.name.lower()} outside the workflow"
            if await self.store.finish_unsuccessfully(job.id, status, code, message):
                await self.store.add_event(
                    job.id,
                    "reconciled",
                    f"Job {status.value}: {message}; credits refunded",
                    level="warning",
                    error_code=code,
                )
                log.warning("job reconciled", job_id=str(job.id), status=status.value)
                report.fixed[str(job.id)] = status
        await self._end_lost_mastering()
        return report

    async def _end_lost_mastering(self) -> None:
        """A finished track whose workflow closed while mastering it (terminated, timed
        out) keeps its provider's file: say so, instead of `pending` forever."""
        for job in await self.store.mastering_jobs():
            activity.heartbeat()
            try:
                description = await self.client.get_workflow_handle(job.workflow_id).describe()
            except RPCError:
                continue
            run_status = description.status
            if run_status is None or run_status is WorkflowExecutionStatus.RUNNING:
                continue
            if await self.store.renditions_failed(job.id):
                await self.store.add_event(
                    job.id,
                    "reconciled",
                    f"Mastering ended with the workflow ({run_status.name.lower()}); "
                    "the original audio stays",
                    level="warning",
                )

    async def _restart_if_lost(self, job: Job, track: Track) -> bool:
        age = (datetime.now(UTC) - _aware(job.created_at)).total_seconds()
        if job.status is not JobStatus.QUEUED or age < self.settings.reconcile_start_after_s:
            return False
        try:
            await start_track_workflow(
                self.client, self.store, self.settings, job, track_input(track, job)
            )
        except (WorkflowNotStarted, WorkflowStartUnknown) as exc:
            # Still QUEUED: the next pass tries again; the other jobs go on now.
            log.warning("restart failed", job_id=str(job.id), error=str(exc))
            return False
        await self.store.add_event(job.id, "restarted", "Workflow started by the reconciler")
        return True


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
