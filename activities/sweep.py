"""Stop provider jobs that outlived their track's workflow.

`temporal workflow terminate`, an execution timeout or a cleanup that gave up leave
ledger rows open for a job that has ended. The reconcile schedule runs this right after
it has brought the jobs themselves in line, so it sees those jobs as ended.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import activity

from activities.providers.base import ProviderError
from core.contracts import SubmissionState
from core.logging import get_logger
from core.metrics import seconds_since
from domain.providers.pay_once import ProviderJobs
from domain.tracks.start import track_input

log = get_logger("soundfoundry.sweep")

# A row whose outcome is unknown is looked for again at most this often, and not at all
# after GIVE_UP_AFTER (Replicate keeps inputs in its listing for about an hour).
RETRY_UNKNOWN_EVERY = timedelta(seconds=30)
GIVE_UP_AFTER = timedelta(hours=2)


def _age(moment: datetime) -> timedelta:
    return timedelta(seconds=seconds_since(moment))


class SweepActivities:
    def __init__(self, jobs: ProviderJobs) -> None:
        self.jobs = jobs

    @activity.defn(name="sweep_submissions")
    async def sweep_submissions(self) -> int:
        """Cancel the open provider jobs of ended tracks; returns how many were stopped."""
        stopped = 0
        ledger = self.jobs.ledger
        for row, track, job in await ledger.unwanted():
            activity.heartbeat()
            provider = self.jobs.providers.get(row.provider)
            request = track_input(track, job).request
            if row.run_id is None:
                looked_at_recently = (
                    row.state is SubmissionState.AMBIGUOUS
                    and _age(row.updated_at) < RETRY_UNKNOWN_EVERY
                )
                if looked_at_recently or _age(row.created_at) > GIVE_UP_AFTER:
                    continue
                found = await self.jobs.resolve(row, provider, request, 0, activity.heartbeat)
                if found is None:
                    await ledger.touch(row.id)
                    continue
                row = found
            try:
                reason = f"job {job.status.value.lower()}"
                if await self.jobs.cancel_row(row, provider, request, reason):
                    stopped += 1
            except ProviderError as exc:
                # Tried again on the next pass.
                log.warning(
                    "could not cancel a provider job",
                    provider=row.provider,
                    provider_run_id=row.run_id,
                    error=exc.message,
                )
        return stopped
