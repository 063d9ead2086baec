"""ProviderHealthWorkflow: asks a worker to check the providers, since keys live there."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from activities.health import HealthActivities
    from core.contracts import PROVIDER_HEALTH_WORKFLOW, ProviderHealthReport


# AUTO_UPGRADE: a probe lasts seconds and carries nothing from an earlier run; once its
# version's workers are stopped it should finish on the current version, not wait for them.
@workflow.defn(name=PROVIDER_HEALTH_WORKFLOW, versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class ProviderHealthWorkflow:
    @workflow.run
    async def run(self) -> ProviderHealthReport:
        return await workflow.execute_activity_method(
            HealthActivities.check_provider_health,
            start_to_close_timeout=timedelta(seconds=20),
            # A health probe reports what it sees; retrying would hide a flapping provider.
            retry_policy=RetryPolicy(maximum_attempts=1),
        )
