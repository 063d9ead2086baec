"""ReconcileWorkflow: one pass of the reconciler, run by a Temporal Schedule."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import ReconcileActivities
    from core.contracts import RECONCILE_WORKFLOW, ReconcileReport


@workflow.defn(name=RECONCILE_WORKFLOW)
class ReconcileWorkflow:
    @workflow.run
    async def run(self) -> ReconcileReport:
        return await workflow.execute_activity_method(
            ReconcileActivities.reconcile_jobs,
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=timedelta(seconds=30),
            # The next scheduled pass retries soon anyway.
            retry_policy=RetryPolicy(maximum_attempts=2),
        )
