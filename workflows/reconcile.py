"""ReconcileWorkflow: one pass of the reconciler, run by a Temporal Schedule."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import ReconcileActivities
    from activities.sweep import SweepActivities
    from core.contracts import RECONCILE_WORKFLOW, ReconcileReport

# Added with the submission ledger: passes recorded before it replay without the sweep.
SWEEP_PATCH = "sweep-submissions-v1"


# AUTO_UPGRADE: a pass lasts seconds and starts afresh each time. Pinned, a pass open on a
# version whose workers were stopped would wait out its execution timeout, and the schedule
# (overlap SKIP) would start no pass meanwhile. A pass that spans a switch replays on the new
# code, so a change that breaks replay of this workflow still takes a `workflow.patched`.
@workflow.defn(name=RECONCILE_WORKFLOW, versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class ReconcileWorkflow:
    @workflow.run
    async def run(self) -> ReconcileReport:
        report = await workflow.execute_activity_method(
            ReconcileActivities.reconcile_jobs,
            start_to_close_timeout=timedelta(minutes=2),
            heartbeat_timeout=timedelta(seconds=30),
            # The next scheduled pass retries soon anyway.
            retry_policy=RetryPolicy(maximum_attempts=2),
        )
        if workflow.patched(SWEEP_PATCH):
            # After the jobs are in line, so a just-terminated track's jobs are stopped now.
            report.provider_jobs_cancelled = await workflow.execute_activity_method(
                SweepActivities.sweep_submissions,
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=2),
            )
        return report
