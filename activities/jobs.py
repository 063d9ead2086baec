"""Bookkeeping activities: the job's state in the database and its credits."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.providers.registry import ProviderRegistry
from activities.recording import recorded_attempt
from core.contracts import (
    CompleteInput,
    ErrorCode,
    FinishInput,
    GenerationPlan,
    RetryBounds,
    TrackInput,
)
from core.settings import Settings
from domain.credits import InsufficientCredits
from domain.tracks.jobs import JobStore


def job_moved(message: str) -> ApplicationError:
    """The job row is no longer this run's: the workflow stops without paying or telling."""
    return ApplicationError(message, type=ErrorCode.JOB_MOVED, non_retryable=True)


class JobActivities:
    def __init__(self, store: JobStore, providers: ProviderRegistry, settings: Settings) -> None:
        self.store = store
        self.providers = providers
        self.settings = settings

    @activity.defn(name="plan_track")
    async def plan_track(self, track: TrackInput) -> GenerationPlan:
        """Mark the job RENDERING and fix the provider chain and bounds for this track."""
        async with recorded_attempt(
            self.store, track_id=track.track_id, job_id=track.job_id, event="rendering"
        ) as attempt:
            try:
                rendering = await self.store.mark_rendering(
                    track.job_id, activity.info().workflow_run_id
                )
            except InsufficientCredits as exc:
                raise ApplicationError(
                    str(exc), type=ErrorCode.INSUFFICIENT_CREDITS, non_retryable=True
                ) from exc
            if not rendering:
                # Cancelled (and refunded) before this run could take it, e.g. between
                # the reconciler's read of a QUEUED job and its restart: nothing may be
                # submitted, charged or announced for it.
                raise job_moved("the job ended before this run started rendering it")
            s = self.settings
            providers = self.providers.plan(s.provider_chain, track.request)
            attempt.message = "Provider chain: " + ", ".join(
                p.name + (f" (skipped: {p.skip_reason})" if p.skip_reason else "")
                for p in providers
            )
            return GenerationPlan(
                providers=providers,
                max_submissions=s.max_submissions_per_track,
                submit_retry=RetryBounds(
                    max_attempts=s.submit_max_attempts,
                    initial_interval_s=s.retry_initial_interval_s,
                    max_interval_s=s.retry_max_interval_s,
                ),
                poll_retry=RetryBounds(
                    max_attempts=s.poll_max_attempts,
                    initial_interval_s=s.retry_initial_interval_s,
                    max_interval_s=s.retry_max_interval_s,
                ),
                generation_timeout_s=s.generation_timeout_s,
                heartbeat_timeout_s=s.heartbeat_timeout_s,
                search_attributes=s.search_attributes_enabled,
                poll_interval_s=s.poll_interval_s,
                request_timeout_s=s.provider_request_timeout_s,
                resolve_window_s=s.submit_resolve_window_s,
                ambiguous_fallback=s.ambiguous_submit_fallback,
                mastering_task_queue=s.mastering_task_queue,
                webhook_poll_interval_s=s.provider_webhook_poll_interval_s,
            )

    @activity.defn(name="complete_job")
    async def complete_job(self, done: CompleteInput) -> None:
        async with recorded_attempt(
            self.store,
            track_id=done.track.track_id,
            job_id=done.track.job_id,
            event="complete",
            provider=done.stored.provider,
        ) as attempt:
            completed = await self.store.mark_complete(
                done.track.job_id,
                done.stored,
                done.checked.info,
                done.checked.audio.content_type,
                run_id=activity.info().workflow_run_id,
                # Mastering follows: the provider's file plays until it is replaced.
                renditions_pending=True,
            )
            if not completed:
                # Cancelled or refunded while the audio was collected: the track is not
                # the user's, so it is neither mastered nor announced as completed.
                raise job_moved("the job ended before its audio could be delivered")
            attempt.message = f"Track complete, audio from {done.stored.provider}"
            if done.fallbacks:
                attempt.message = f"Fallback successful, using {done.stored.provider}"

    @activity.defn(name="finish_job")
    async def finish_job(self, finish: FinishInput) -> None:
        """FAILED or CANCELLED: record the outcome and refund the credits once."""
        async with recorded_attempt(
            self.store,
            track_id=finish.track.track_id,
            job_id=finish.track.job_id,
            event=finish.status.value.lower(),
        ) as attempt:
            changed = await self.store.finish_unsuccessfully(
                finish.track.job_id,
                finish.status,
                finish.error_code,
                finish.message,
                run_id=activity.info().workflow_run_id,
            )
            attempt.message = f"Job {finish.status.value}" + (
                f" ({finish.error_code})" if finish.error_code else ""
            )
            attempt.data = {"refunded": changed}
