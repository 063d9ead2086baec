"""A user's cancel landing between the reconciler's read of a QUEUED job and its restart of
the job's workflow — the real reconcile activity, API, Temporal and worker; the cancel is
placed exactly there by a store that lets it through right after the read.

The job had no workflow (its start was lost), so the cancel cancels and refunds it on the
spot; the reconciler, acting on what it read, then starts the workflow. That run must not
submit (pay), charge the user again, or tell anyone the track completed or failed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.reconcile import ReconcileActivities
from core.contracts import ErrorCode, GenerationRequest, JobStatus
from core.models import Job, Track
from domain.tracks.jobs import JobStore
from domain.tracks.submissions import SubmissionLedger
from tests.conftest import Stack
from tests.e2e.test_webhooks import Receiver, receiver

__all__ = ["receiver"]


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    # The reconciler restarts a QUEUED job without a workflow at once.
    return {"reconcile_start_after_s": 0.01, "webhook_allowed_hosts": ["127.0.0.1"]}


class CancelAfterRead(JobStore):
    """The reconciler's store; `after_read` runs between its read and everything after."""

    def __init__(self, store: JobStore, after_read: Callable[[], Awaitable[None]]) -> None:
        super().__init__(store.sessions)
        self.after_read = after_read

    async def active_jobs(self, limit: int = 500) -> list[tuple[Job, Track]]:
        read = await super().active_jobs(limit)
        await self.after_read()
        return read


async def test_a_cancel_between_the_reconcilers_read_and_its_start_pays_nothing(
    stack: Stack, receiver: Receiver
) -> None:
    user_id, auth = await stack.user(credits=10)
    before = await stack.credits(user_id)
    # What a create whose workflow start was lost leaves: a QUEUED job, no workflow.
    track, job = await stack.store.create_track(
        user_id,
        GenerationRequest(prompt="Warm ambient pad", duration_s=6),
        1,
        webhook_url=receiver.url,
    )

    async def users_cancel() -> None:
        answer = await stack.http.post(f"/api/jobs/{job.id}/cancel", headers=auth)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "CANCELLED"

    await asyncio.sleep(0.05)  # older than reconcile_start_after_s
    client = stack.temporal.client
    reconcile = ReconcileActivities(
        CancelAfterRead(stack.store, users_cancel), client, stack.settings
    )
    report = await ActivityEnvironment().run(reconcile.reconcile_jobs)
    assert report.restarted == [str(job.id)], "the race did not happen as staged"

    # The restarted run ends on its first step, without finishing or notifying anything.
    handle = client.get_workflow_handle(f"track-{track.id}")
    with pytest.raises(WorkflowFailureError) as ended:
        await handle.result()
    cause = ended.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ErrorCode.JOB_MOVED
    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED

    fresh = (await stack.http.get(f"/api/jobs/{job.id}", headers=auth)).json()
    assert (fresh["status"], fresh["credits_refunded"]) == (JobStatus.CANCELLED.value, True)
    assert await stack.credits(user_id) == before, "the cancelled job was charged again"
    ledger = SubmissionLedger(stack.store.sessions)
    assert await ledger.for_job(uuid.UUID(str(job.id))) == [], "a provider was paid for it"
    events = [e.event for e in await stack.store.events(job.id)]
    assert not {"submitted", "complete", "failed"} & set(events), events
    assert receiver.received == [], "the user was told about a track that never ran"
