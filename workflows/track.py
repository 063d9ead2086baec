"""TrackWorkflow: one track's story, from its plan to telling the user.

plan -> submit -> wait -> collect (one provider after another until one delivers) ->
cover -> complete -> master -> notify. Every side effect is an activity; this class only
decides what runs next. Bounds that come from settings reach it through `plan_track`,
whose result is recorded in history, so a replay sees the same plan whatever the worker's
settings are today.

Changing this workflow: the change is either compatible with the saved histories
(`tests/workflows/test_replay.py` passes) or it ships as a new worker deployment build id.
TrackWorkflow is PINNED (Worker Versioning, core/deployment.py): a run finishes on the
version that started it, so an incompatible change needs no `workflow.patched` branch,
only its new build id and fresh saved histories (CONTRIBUTING.md says how). Runs started
before 1.0 finish on a 0.x worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import VersioningBehavior
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.assets import AssetActivities
    from activities.generation import GenerationActivities
    from activities.jobs import JobActivities
    from activities.webhooks import WebhookActivities
    from core.contracts import (
        JOB_STATUS_ATTRIBUTE,
        PROGRESS_QUERY,
        PROVIDER_ATTRIBUTE,
        PROVIDER_EVENT_SIGNAL,
        TRACK_WORKFLOW,
        CancelInput,
        CheckedAudio,
        CollectInput,
        CompleteInput,
        CoverInput,
        ErrorCode,
        FinishInput,
        GenerationPlan,
        JobStatus,
        MasterInput,
        Progress,
        ProviderEvent,
        ProviderPlan,
        RenditionsInput,
        Step,
        StoredTrack,
        Submission,
        SubmitInput,
        TrackInput,
        TrackResult,
        WebhookInput,
    )
    from workflows.failures import (
        NO_CAPABLE_PROVIDER,
        GenerationFailed,
        LinkFailed,
        error_code,
        error_message,
        workers_lost,
    )
    from workflows.policies import (
        BOOKKEEPING_RETRY,
        BOOKKEEPING_TIMEOUT,
        CLEANUP_TIMEOUT,
        FIRST_POLL_S,
        MASTER_RETRY,
        MASTER_TIMEOUT,
        MAX_CAPACITY_WAIT_S,
        SUBMIT_TIMEOUT,
        WEBHOOK_RETRY,
        WEBHOOK_TIMEOUT,
        provider_retry,
    )

T = TypeVar("T")
A = TypeVar("A")


@workflow.defn(name=TRACK_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class TrackWorkflow:
    def __init__(self) -> None:
        self._progress = Progress(step=Step.QUEUED, progress=0.0)
        self._plan: GenerationPlan | None = None
        # The current link's paid job, from its submit until its audio is collected.
        self._submission: Submission | None = None
        # Verified provider webhooks, by submission token, until the wait consumes them.
        self._provider_events: dict[str, ProviderEvent] = {}

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> Progress:
        return self._progress

    @workflow.signal(name=PROVIDER_EVENT_SIGNAL)
    def provider_event(self, event: ProviderEvent) -> None:
        self._provider_events[event.token] = event

    @workflow.run
    async def run(self, track: TrackInput) -> TrackResult:
        try:
            return await self._make_track(track)
        except asyncio.CancelledError:
            await self._on_cancel(track)
            raise
        except Exception as exc:
            if is_cancelled_exception(exc):
                await self._on_cancel(track)
                raise
            code, message = error_code(exc), error_message(exc)
            if code == ErrorCode.JOB_MOVED:
                # Whoever moved the job (a cancel, the reconciler) recorded, refunded and
                # told the user; this run only stops.
                raise ApplicationError(
                    f"track stopped: {message}", type=code, non_retryable=True
                ) from exc
            await self._on_failure(track, code, message)
            raise ApplicationError(
                f"track failed: {message}", type=code, non_retryable=True
            ) from exc

    async def _make_track(self, track: TrackInput) -> TrackResult:
        plan = await self._plan_track(track)
        checked, fallbacks = await self._generate(track, plan)
        cover_key = await self._cover(track)
        stored = StoredTrack(
            audio_key=checked.audio.key, cover_key=cover_key, provider=checked.audio.provider
        )
        await self._complete(track, stored, checked, fallbacks)
        await self._master(track, plan, stored.audio_key)
        await self._notify(track, JobStatus.COMPLETE)
        return TrackResult(
            track_id=track.track_id,
            status=JobStatus.COMPLETE,
            provider=stored.provider,
            audio_key=stored.audio_key,
            cover_key=stored.cover_key,
        )

    # -- the story, step by step --------------------------------------------------------
    async def _plan_track(self, track: TrackInput) -> GenerationPlan:
        self._set(Step.PREPARING, 0.05)
        self._plan = await self._bookkeeping(JobActivities.plan_track, track)
        self._publish(status=JobStatus.RENDERING)
        return self._plan

    async def _generate(self, track: TrackInput, plan: GenerationPlan) -> tuple[CheckedAudio, int]:
        """Walk the provider chain until one produces audio that passes the check; return
        it with the number of links that failed before it.

        Each link pays at most once (the submit activity keeps the ledger), and a link
        that fails has every job it left open cancelled before the next one starts.
        """
        failed: str | None = None
        skipped = "; ".join(f"{p.name}: {p.skip_reason}" for p in plan.providers if p.skip_reason)
        last_code = NO_CAPABLE_PROVIDER
        last_message = f"no provider can serve this track ({skipped})"
        links = [link for link in plan.providers if not link.skip_reason]
        for number, link in enumerate(links, start=1):
            self._progress = Progress(
                step=Step.GENERATING, progress=0.1, provider=link.name, attempt=number
            )
            self._publish(provider=link.name)
            try:
                return await self._try_link(track, plan, link, number, failed), number - 1
            except (ActivityError, LinkFailed) as exc:
                if is_cancelled_exception(exc):
                    raise
                last_code, last_message = error_code(exc), error_message(exc)
                if self._submission is not None:
                    await self._cancel_submissions(
                        track, f"{link.name} failed: {last_code}", resolve_unknown=False
                    )
                if last_code == ErrorCode.SUBMISSION_CAP.value:
                    break
                if last_code == ErrorCode.AMBIGUOUS.value and not plan.ambiguous_fallback:
                    break
                failed = f"{link.name} ({last_code})"
        raise GenerationFailed(last_code, f"every provider failed; last: {last_message}")

    async def _try_link(
        self,
        track: TrackInput,
        plan: GenerationPlan,
        link: ProviderPlan,
        number: int,
        failed: str | None,
    ) -> CheckedAudio:
        """One provider: submit, wait for its job, collect the audio."""
        self._submission = None
        deadline = workflow.now() + timedelta(seconds=plan.generation_timeout_s)
        submission = await self._outlasting_workers(
            lambda: self._submit(track, plan, link, number, failed), deadline
        )
        self._submission = submission
        self._set(Step.GENERATING, 0.1)
        audio_url = None
        if link.remote and not submission.done:
            audio_url = await self._wait_for_provider(submission, plan)
        checked = await self._outlasting_workers(
            lambda: self._collect(track, plan, submission, audio_url), deadline
        )
        self._submission = None
        if number > 1:
            # Earlier links may have left a submit whose job only shows up now.
            await self._cancel_submissions(
                track, "track finished by another provider", resolve_unknown=False
            )
        return checked

    async def _submit(
        self,
        track: TrackInput,
        plan: GenerationPlan,
        link: ProviderPlan,
        number: int,
        failed: str | None,
    ) -> Submission:
        """Submit once (the activity looks at the new job before answering); while the
        provider is at its in-flight cap, wait on a timer (no worker slot held) and ask
        again."""
        waiting_since = None
        delay = plan.poll_interval_s
        while True:
            try:
                return await workflow.execute_activity_method(
                    GenerationActivities.submit_generation,
                    SubmitInput(
                        track=track,
                        provider=link.name,
                        submission_number=number,
                        falling_back_from=failed,
                        max_paid=plan.max_submissions,
                        resolve_window_s=plan.resolve_window_s,
                        waiting_since=waiting_since,
                    ),
                    start_to_close_timeout=SUBMIT_TIMEOUT
                    + timedelta(seconds=plan.resolve_window_s),
                    heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_s),
                    retry_policy=provider_retry(plan.submit_retry),
                )
            except ActivityError as exc:
                if error_code(exc) != ErrorCode.PROVIDER_BUSY.value:
                    raise
            if waiting_since is None:
                waiting_since = workflow.now()
                self._set(Step.PROVIDER_QUEUE, 0.1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(plan.poll_interval_s, MAX_CAPACITY_WAIT_S))

    async def _wait_for_provider(self, submission: Submission, plan: GenerationPlan) -> str | None:
        """Poll with short activities and wait on a durable timer in between, so a
        waiting track holds no worker slot; a verified webhook ends the wait early.
        Returns the audio's URL when the look that saw the job finish named it."""
        deadline = workflow.now() + timedelta(seconds=plan.generation_timeout_s)
        interval = plan.poll_interval_s
        delay = min(FIRST_POLL_S, interval)
        if submission.webhook:
            # The delivery ends the wait; a poll only covers one that was lost.
            interval = max(interval, plan.webhook_poll_interval_s)
            delay = interval
        token = submission.token or ""
        while True:
            remaining = (deadline - workflow.now()).total_seconds()
            if remaining <= 0:
                raise LinkFailed(
                    ErrorCode.TIMEOUT.value,
                    f"{submission.provider} gave no result within {plan.generation_timeout_s:g} s",
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(
                    lambda: token in self._provider_events, timeout=min(delay, remaining)
                )
            event = self._provider_events.pop(token, None)
            if event and event.state == "succeeded":
                # A verified delivery is the provider's own word: collect without asking
                # again. (A failure is read from the provider by the poll below.)
                return None
            status = await self._outlasting_workers(
                lambda: workflow.execute_activity_method(
                    GenerationActivities.poll_generation,
                    submission,
                    start_to_close_timeout=timedelta(seconds=plan.request_timeout_s + 5),
                    retry_policy=provider_retry(plan.poll_retry),
                ),
                deadline,
            )
            if status.done:
                return status.audio_url
            if status.progress is not None:
                self._set(Step.GENERATING, 0.1 + 0.5 * min(max(status.progress, 0.0), 1.0))
            delay = min(delay * 2, interval)

    async def _collect(
        self,
        track: TrackInput,
        plan: GenerationPlan,
        submission: Submission,
        audio_url: str | None,
    ) -> CheckedAudio:
        """Download the audio, check it and store it at its final key: one activity."""
        self._set(Step.CHECKING, 0.7)
        return await workflow.execute_activity_method(
            GenerationActivities.collect_audio,
            CollectInput(track=track, submission=submission, audio_url=audio_url),
            start_to_close_timeout=timedelta(seconds=plan.generation_timeout_s),
            heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_s),
            retry_policy=provider_retry(plan.poll_retry),
        )

    async def _cover(self, track: TrackInput) -> str:
        self._set(Step.COVER, 0.9)
        return await self._bookkeeping(AssetActivities.store_cover, CoverInput(track=track))

    async def _complete(
        self, track: TrackInput, stored: StoredTrack, checked: CheckedAudio, fallbacks: int
    ) -> None:
        """COMPLETE: the track plays the provider's file until mastering replaces it."""
        self._set(Step.FINISHING, 0.95)
        await self._bookkeeping(
            JobActivities.complete_job,
            CompleteInput(track=track, stored=stored, checked=checked, fallbacks=fallbacks),
        )
        self._set(Step.DONE, 1.0)
        self._publish(status=JobStatus.COMPLETE)

    async def _master(self, track: TrackInput, plan: GenerationPlan, source_key: str) -> None:
        """Master the finished track and switch it to its renditions. The track is
        COMPLETE already: a failure or a cancel here leaves it playing the provider's file."""
        reason = "mastering failed"
        try:
            mastered = await workflow.execute_activity_method(
                AssetActivities.master_audio,
                MasterInput(track=track, source_key=source_key),
                task_queue=plan.mastering_task_queue,
                # Queued behind other masterings, not lost: only the running time counts.
                start_to_close_timeout=MASTER_TIMEOUT,
                heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_s),
                retry_policy=MASTER_RETRY,
                # Cleanup must not race an attempt that is still storing files.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
        except (ActivityError, asyncio.CancelledError) as exc:
            if is_cancelled_exception(exc):
                reason = "cancelled by request"
            else:
                reason = f"mastering failed: {error_message(exc)}"
            workflow.logger.warning("no renditions: %s", reason)
            mastered = None
        await self._bookkeeping(
            AssetActivities.record_renditions,
            RenditionsInput(track=track, mastered=mastered, reason=None if mastered else reason),
        )

    async def _notify(
        self, track: TrackInput, status: JobStatus, error_code: str | None = None
    ) -> None:
        """Tell the user's webhook how the job ended; its failure never changes the job."""
        if not track.webhook_url:
            return
        try:
            await workflow.execute_activity_method(
                WebhookActivities.deliver_webhook,
                WebhookInput(track=track, status=status, error_code=error_code),
                start_to_close_timeout=WEBHOOK_TIMEOUT,
                retry_policy=WEBHOOK_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("webhook delivery gave up")

    # -- the other endings --------------------------------------------------------------
    async def _on_failure(self, track: TrackInput, code: str, message: str) -> None:
        self._publish(status=JobStatus.FAILED)
        await self._finish(track, JobStatus.FAILED, code, message)
        await self._notify(track, JobStatus.FAILED, code)

    async def _on_cancel(self, track: TrackInput) -> None:
        self._publish(status=JobStatus.CANCELLED)
        # Also when the cancel came mid-submit: the cleanup waits for its answer.
        await self._cancel_submissions(track, "cancelled by request")
        await self._finish(track, JobStatus.CANCELLED, None, "cancelled by request")
        await self._notify(track, JobStatus.CANCELLED)

    async def _finish(
        self, track: TrackInput, status: JobStatus, code: str | None, message: str | None
    ) -> None:
        """FAILED or CANCELLED: record it and refund the credits (once)."""
        await workflow.execute_activity_method(
            JobActivities.finish_job,
            FinishInput(track=track, status=status, error_code=code, message=message),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )

    async def _cancel_submissions(
        self, track: TrackInput, reason: str, *, resolve_unknown: bool = True
    ) -> None:
        """Stop every provider job this track left open, read from the ledger."""
        window = self._plan.resolve_window_s if self._plan else 30.0
        heartbeat = self._plan.heartbeat_timeout_s if self._plan else 60.0
        try:
            await workflow.execute_activity_method(
                GenerationActivities.cancel_submissions,
                CancelInput(
                    track=track,
                    reason=reason,
                    resolve_window_s=window,
                    resolve_unknown=resolve_unknown,
                ),
                start_to_close_timeout=CLEANUP_TIMEOUT + timedelta(seconds=window),
                heartbeat_timeout=timedelta(seconds=heartbeat),
                retry_policy=BOOKKEEPING_RETRY,
            )
        except ActivityError:
            # The reconciler sweeps what is left open once the job has ended.
            workflow.logger.warning("could not cancel the provider's jobs")
        self._submission = None

    # -- helpers ------------------------------------------------------------------------
    async def _bookkeeping(self, method: Callable[[Any, A], Awaitable[T]], arg: A) -> T:
        """A short, repeatable step on our own database or storage, patiently retried; a
        local activity: no task dispatch, fewer history events."""
        return await workflow.execute_local_activity_method(
            method,
            arg,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )

    async def _outlasting_workers(self, step: Callable[[], Awaitable[T]], deadline: datetime) -> T:
        """Run one step of a link; run it again while it fails only because workers died
        (retry budgets are for the provider's errors), until the link's deadline."""
        while True:
            try:
                return await step()
            except ActivityError as exc:
                if not (workers_lost(exc) and workflow.now() < deadline):
                    raise
                workflow.logger.warning("workers died under a step; running it again")

    def _publish(self, status: JobStatus | None = None, provider: str | None = None) -> None:
        """Keep the JobStatus and Provider search attributes current for operators."""
        if self._plan is None or not self._plan.search_attributes:
            return
        updates = []
        if status is not None:
            updates.append(JOB_STATUS_ATTRIBUTE.value_set(status.value))
        if provider is not None:
            updates.append(PROVIDER_ATTRIBUTE.value_set(provider))
        workflow.upsert_search_attributes(updates)

    def _set(self, step: Step, progress: float) -> None:
        self._progress = Progress(
            step=step,
            progress=progress,
            provider=self._progress.provider,
            attempt=self._progress.attempt,
        )
