"""TrackWorkflow: deterministic orchestration of one track, from credits to cover art.

Every side effect is an activity; this class only decides what runs next. Bounds that
come from settings reach it through `plan_track`, whose result is recorded in history, so
a replay sees the same plan whatever the worker's settings are today.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    TimeoutType,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.assets import AssetActivities
    from activities.generation import GenerationActivities
    from activities.jobs import JobActivities
    from activities.webhooks import WebhookActivities
    from core.contracts import (
        JOB_STATUS_ATTRIBUTE,
        NON_RETRYABLE,
        PROGRESS_QUERY,
        PROVIDER_ATTRIBUTE,
        PROVIDER_EVENT_SIGNAL,
        TRACK_WORKFLOW,
        CancelInput,
        CheckedAudio,
        CheckInput,
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
        RetryBounds,
        StagedAudio,
        Step,
        StoreAudioInput,
        StoredTrack,
        Submission,
        SubmitInput,
        TrackInput,
        TrackResult,
        WebhookInput,
    )

# Bookkeeping (database, storage) is cheap and must eventually succeed: retry patiently.
BOOKKEEPING_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
)
BOOKKEEPING_TIMEOUT = timedelta(seconds=60)
CHECK_TIMEOUT = timedelta(minutes=3)
# A receiver that is down gets about an hour of retries before we give up on it.
WEBHOOK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=12,
)
SUBMIT_TIMEOUT = timedelta(seconds=60)
NON_RETRYABLE_TYPES = sorted(code.value for code in NON_RETRYABLE)
NO_CAPABLE_PROVIDER = "no_capable_provider"

# Added after the first release: runs recorded before it replay without these upserts.
SEARCH_ATTRIBUTES_PATCH = "search-attributes-v1"
WEBHOOKS_PATCH = "webhooks-v1"
# Paid submissions through the ledger, waiting on timers/signals, cleanup on every exit.
LEDGER_PATCH = "submission-ledger-v1"
# Cleanup gets the provider's answer in flight, plus a margin.
CLEANUP_TIMEOUT = timedelta(minutes=5)
FIRST_POLL_S = 1.0
# A track held by a provider's in-flight cap asks again at most this far apart.
MAX_CAPACITY_WAIT_S = 10.0
# Retry budgets are for the provider's errors. A step whose attempts all ran out because
# workers died (activity timeouts) runs again until its link's deadline.
OUTLAST_WORKERS_PATCH = "outlast-lost-workers-v1"
# Fast models are often done by the time their submit is answered: look once at once.
POLL_AT_ONCE_PATCH = "poll-at-once-v1"
# Bookkeeping (plan, store, complete) runs as local activities: no task dispatch and three
# history events fewer each, for work that is short and safe to repeat.
LOCAL_BOOKKEEPING_PATCH = "local-bookkeeping-v1"
# Once COMPLETE (playing the provider's file), the track is mastered to the loudness
# target and gets a FLAC master and an MP3 stream; its tempo is measured then, not in the
# check. Mastering never fails or cancels a finished track.
RENDITIONS_PATCH = "renditions-v1"
# Runs started since this patch record it instead of each one above (every patch marker
# also costs an upsert of TemporalChangeVersion on the server), and take the changes it
# brings: the submit looks at the provider's job once before answering, and one activity
# downloads, checks and stages the audio (two round trips fewer per track).
ONE_PASS_PATCH = "one-pass-v1"
# Runs started from here on record this one patch instead, which implies ONE_PASS_PATCH:
# the collecting activity stores checked audio at its final key itself, so the staging
# copy and the local activity that made it are gone from every track's last steps.
CURRENT_PATCH = "one-pass-v2"
MASTER_TIMEOUT = timedelta(minutes=10)
MASTER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_TYPES,
)


class GenerationFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LinkFailed(Exception):
    """One provider of the chain did not deliver; the next one may."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _policy(bounds: RetryBounds) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=bounds.initial_interval_s),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=bounds.max_interval_s),
        maximum_attempts=bounds.max_attempts,
        non_retryable_error_types=NON_RETRYABLE_TYPES,
    )


T = TypeVar("T")
A = TypeVar("A")


def _workers_lost(exc: ActivityError) -> bool:
    """The activity's attempts ran out on timeouts: its workers died or hung, the provider
    never answered an error (calls to providers time out inside the activity)."""
    cause = exc.cause
    return isinstance(cause, TimeoutError) and cause.type in (
        TimeoutType.HEARTBEAT,
        TimeoutType.START_TO_CLOSE,
    )


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, LinkFailed):
        return exc.code
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    if isinstance(cause, ApplicationError) and cause.type:
        return cause.type
    if isinstance(cause, TimeoutError):
        return ErrorCode.TIMEOUT.value
    return ErrorCode.OTHER.value


def _error_message(exc: BaseException) -> str:
    cause = exc.cause if isinstance(exc, ActivityError) and exc.cause else exc
    return str(cause) or type(cause).__name__


@workflow.defn(name=TRACK_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class TrackWorkflow:
    def __init__(self) -> None:
        self._progress = Progress(step=Step.QUEUED, progress=0.0)
        self._submission: Submission | None = None
        self._current = False
        self._stores_in_collect = False
        self._publish_attributes = False
        self._ledger = False
        self._local_bookkeeping = False
        self._renditions = False
        self._plan: GenerationPlan | None = None
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
            code = exc.code if isinstance(exc, GenerationFailed) else _error_code(exc)
            if code == ErrorCode.JOB_MOVED:
                # Whoever moved the job (a cancel, the reconciler) recorded, refunded and
                # told the user; this run only stops.
                raise ApplicationError(
                    f"track stopped: {_error_message(exc)}", type=code, non_retryable=True
                ) from exc
            self._publish(status=JobStatus.FAILED)
            await self._finish(track, JobStatus.FAILED, code, _error_message(exc))
            await self._notify(track, JobStatus.FAILED, code)
            raise ApplicationError(
                f"track failed: {_error_message(exc)}", type=code, non_retryable=True
            ) from exc

    async def _bookkeeping(self, method: Callable[[Any, A], Awaitable[T]], arg: A) -> T:
        """A short, repeatable step on our own database or storage, patiently retried."""
        if self._local_bookkeeping:
            return await workflow.execute_local_activity_method(
                method,
                arg,
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=BOOKKEEPING_RETRY,
            )
        return await workflow.execute_activity_method(
            method,
            arg,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )

    async def _make_track(self, track: TrackInput) -> TrackResult:
        self._set(Step.PREPARING, 0.05)
        self._stores_in_collect = workflow.patched(CURRENT_PATCH)
        self._current = self._stores_in_collect or workflow.patched(ONE_PASS_PATCH)
        self._local_bookkeeping = self._since(LOCAL_BOOKKEEPING_PATCH)
        self._renditions = self._since(RENDITIONS_PATCH)
        plan = await self._bookkeeping(JobActivities.plan_track, track)
        self._publish_attributes = plan.search_attributes and self._since(SEARCH_ATTRIBUTES_PATCH)
        self._publish(status=JobStatus.RENDERING)
        self._plan = plan
        self._ledger = self._since(LEDGER_PATCH)
        if self._ledger:
            checked, fallbacks = await self._generate(track, plan)
        else:
            checked, fallbacks = await self._generate_before_ledger(track, plan)

        if checked.stored_key is not None:
            audio_key = checked.stored_key
        else:
            self._set(Step.STORING, 0.8)
            audio_key = await self._bookkeeping(
                AssetActivities.store_audio, StoreAudioInput(track=track, checked=checked)
            )
        self._set(Step.COVER, 0.9)
        cover_key = await self._bookkeeping(AssetActivities.store_cover, CoverInput(track=track))
        stored = StoredTrack(
            audio_key=audio_key, cover_key=cover_key, provider=checked.staged.provider
        )
        self._set(Step.FINISHING, 0.95)
        await self._bookkeeping(
            JobActivities.complete_job,
            CompleteInput(
                track=track,
                stored=stored,
                checked=checked,
                fallbacks=fallbacks,
                renditions_pending=self._renditions,
            ),
        )
        self._set(Step.DONE, 1.0)
        self._publish(status=JobStatus.COMPLETE)
        if self._renditions:
            await self._make_renditions(track, audio_key, plan)
        await self._notify(track, JobStatus.COMPLETE)
        return TrackResult(
            track_id=track.track_id,
            status=JobStatus.COMPLETE,
            provider=stored.provider,
            audio_key=audio_key,
            cover_key=cover_key,
        )

    async def _make_renditions(
        self, track: TrackInput, source_key: str, plan: GenerationPlan
    ) -> None:
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
                reason = f"mastering failed: {_error_message(exc)}"
            workflow.logger.warning("no renditions: %s", reason)
            mastered = None
        await self._bookkeeping(
            AssetActivities.record_renditions,
            RenditionsInput(track=track, mastered=mastered, reason=None if mastered else reason),
        )

    async def _generate(self, track: TrackInput, plan: GenerationPlan) -> tuple[CheckedAudio, int]:
        """Walk the provider chain until one produces audio that passes the check.

        Each link pays at most once (the submit activity keeps the ledger), and a link
        that fails has every job it left open cancelled before the next one starts.
        """
        failed: str | None = None
        skipped = "; ".join(f"{p.name}: {p.skip_reason}" for p in plan.providers if p.skip_reason)
        last_code, last_message = (
            NO_CAPABLE_PROVIDER,
            f"no provider can serve this track ({skipped})",
        )
        number = 0
        for link in plan.providers:
            if link.skip_reason:
                continue
            number += 1
            self._progress = Progress(
                step=Step.GENERATING, progress=0.1, provider=link.name, attempt=number
            )
            self._publish(provider=link.name)
            try:
                return await self._try_link(track, plan, link, number, failed), number - 1
            except (ActivityError, LinkFailed) as exc:
                if is_cancelled_exception(exc):
                    raise
                last_code, last_message = _error_code(exc), _error_message(exc)
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
        self._submission = None
        deadline = workflow.now() + timedelta(seconds=plan.generation_timeout_s)
        submission = await self._outlasting_workers(
            lambda: self._submit(track, plan, link, number, failed), deadline
        )
        self._submission = submission
        self._set(Step.GENERATING, 0.1)
        if link.remote and not submission.done:
            audio_url = await self._wait_for_provider(submission, plan)
        else:
            audio_url = None
        if self._current:
            checked = await self._outlasting_workers(
                lambda: self._collect(track, plan, submission, audio_url), deadline
            )
        else:
            checked = await self._fetch_then_check(track, plan, submission, deadline)
        self._submission = None
        if number > 1:
            # Earlier links may have left a submit whose job only shows up now.
            await self._cancel_submissions(
                track, "track finished by another provider", resolve_unknown=False
            )
        return checked

    async def _fetch_then_check(
        self, track: TrackInput, plan: GenerationPlan, submission: Submission, deadline: datetime
    ) -> CheckedAudio:
        """Runs started before ONE_PASS_PATCH: two activities, the audio staged between."""
        staged = await self._outlasting_workers(
            lambda: workflow.execute_activity_method(
                GenerationActivities.fetch_generation,
                submission,
                start_to_close_timeout=timedelta(seconds=plan.generation_timeout_s),
                heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_s),
                retry_policy=_policy(plan.poll_retry),
            ),
            deadline,
        )
        return await self._outlasting_workers(lambda: self._check(track, plan, staged), deadline)

    async def _collect(
        self,
        track: TrackInput,
        plan: GenerationPlan,
        submission: Submission,
        audio_url: str | None,
    ) -> CheckedAudio:
        self._set(Step.CHECKING, 0.7)
        return await workflow.execute_activity_method(
            GenerationActivities.collect_audio,
            CollectInput(
                track=track,
                submission=submission,
                measure_tempo=not self._renditions,
                audio_url=audio_url,
                store=self._stores_in_collect,
            ),
            start_to_close_timeout=timedelta(seconds=plan.generation_timeout_s),
            heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_s),
            retry_policy=_policy(plan.poll_retry),
        )

    async def _submit(
        self,
        track: TrackInput,
        plan: GenerationPlan,
        link: ProviderPlan,
        number: int,
        failed: str | None,
    ) -> Submission:
        """Submit once; while the provider is at its in-flight cap, wait on a timer (no
        worker slot held) and ask again."""
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
                        look=self._current,
                    ),
                    start_to_close_timeout=SUBMIT_TIMEOUT
                    + timedelta(seconds=plan.resolve_window_s),
                    heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_s),
                    retry_policy=_policy(plan.submit_retry),
                )
            except ActivityError as exc:
                if _error_code(exc) != ErrorCode.PROVIDER_BUSY.value:
                    raise
            if waiting_since is None:
                waiting_since = workflow.now()
                self._set(Step.PROVIDER_QUEUE, 0.1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(plan.poll_interval_s, MAX_CAPACITY_WAIT_S))

    async def _check(
        self, track: TrackInput, plan: GenerationPlan, staged: StagedAudio
    ) -> CheckedAudio:
        self._set(Step.CHECKING, 0.7)
        return await workflow.execute_activity_method(
            GenerationActivities.check_audio,
            CheckInput(track=track, staged=staged, measure_tempo=not self._renditions),
            start_to_close_timeout=CHECK_TIMEOUT,
            # A worker that dies mid-check is noticed in seconds, not CHECK_TIMEOUT.
            heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_s),
            retry_policy=_policy(plan.poll_retry),
        )

    async def _outlasting_workers(self, step: Callable[[], Awaitable[T]], deadline: datetime) -> T:
        """Run one step of a link; run it again while it fails only because workers died."""
        while True:
            try:
                return await step()
            except ActivityError as exc:
                if not (
                    _workers_lost(exc)
                    and workflow.now() < deadline
                    and self._since(OUTLAST_WORKERS_PATCH)
                ):
                    raise
                workflow.logger.warning("workers died under a step; running it again")

    async def _wait_for_provider(self, submission: Submission, plan: GenerationPlan) -> str | None:
        """Poll with short activities and wait on a durable timer in between, so a
        waiting track holds no worker slot; a verified webhook ends the wait early.
        Returns the audio's URL when the look that saw the job finish named it."""
        deadline = workflow.now() + timedelta(seconds=plan.generation_timeout_s)
        interval = plan.poll_interval_s
        delay = min(FIRST_POLL_S, interval)
        if submission.webhook and plan.webhook_poll_interval_s:
            # The delivery ends the wait; a poll only covers one that was lost. (Both
            # fields are recorded data: runs from before them keep polling as they did.)
            interval = max(interval, plan.webhook_poll_interval_s)
            delay = interval
        token = submission.token or ""
        # Current runs looked once inside the submit already.
        look_now = not self._current and workflow.patched(POLL_AT_ONCE_PATCH)
        while True:
            remaining = (deadline - workflow.now()).total_seconds()
            if remaining <= 0:
                raise LinkFailed(
                    ErrorCode.TIMEOUT.value,
                    f"{submission.provider} gave no result within {plan.generation_timeout_s:g} s",
                )
            if not look_now:
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(
                        lambda: token in self._provider_events, timeout=min(delay, remaining)
                    )
            look_now = False
            event = self._provider_events.pop(token, None)
            if event and event.state == "succeeded" and plan.webhook_poll_interval_s:
                # A verified delivery is the provider's own word: collect without asking
                # again. (Plans from before this field confirmed it with a poll.)
                return None
            status = await self._outlasting_workers(
                lambda: workflow.execute_activity_method(
                    GenerationActivities.poll_generation,
                    submission,
                    start_to_close_timeout=timedelta(seconds=plan.request_timeout_s + 5),
                    retry_policy=_policy(plan.poll_retry),
                ),
                deadline,
            )
            if status.done:
                return status.audio_url
            if status.progress is not None:
                self._set(Step.GENERATING, 0.1 + 0.5 * min(max(status.progress, 0.0), 1.0))
            delay = min(delay * 2, interval)

    async def _cancel_submissions(
        self, track: TrackInput, reason: str, *, resolve_unknown: bool = True
    ) -> None:
        """Stop every provider job this track left open, read from the ledger."""
        window = self._plan.resolve_window_s if self._plan else 30.0
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
                heartbeat_timeout=timedelta(
                    seconds=self._plan.heartbeat_timeout_s if self._plan else 60
                ),
                retry_policy=BOOKKEEPING_RETRY,
            )
        except ActivityError:
            # The reconciler sweeps what is left open once the job has ended.
            workflow.logger.warning("could not cancel the provider's jobs")
        self._submission = None

    async def _generate_before_ledger(
        self, track: TrackInput, plan: GenerationPlan
    ) -> tuple[CheckedAudio, int]:
        """The chain as runs started before the ledger walk it (kept for their replay)."""
        submissions = 0
        failed: str | None = None
        skipped = "; ".join(f"{p.name}: {p.skip_reason}" for p in plan.providers if p.skip_reason)
        last_code, last_message = (
            NO_CAPABLE_PROVIDER,
            f"no provider can serve this track ({skipped})",
        )
        for link in plan.providers:
            if link.skip_reason:
                continue
            if submissions >= plan.max_submissions:
                last_message = f"submission cap of {plan.max_submissions} reached"
                break
            submissions += 1
            self._progress = Progress(
                step=Step.GENERATING, progress=0.1, provider=link.name, attempt=submissions
            )
            self._publish(provider=link.name)
            try:
                self._submission = await workflow.execute_activity_method(
                    GenerationActivities.submit_generation,
                    SubmitInput(
                        track=track,
                        provider=link.name,
                        submission_number=submissions,
                        falling_back_from=failed,
                    ),
                    start_to_close_timeout=SUBMIT_TIMEOUT,
                    retry_policy=_policy(plan.submit_retry),
                )
                staged = await workflow.execute_activity_method(
                    GenerationActivities.await_generation,
                    self._submission,
                    start_to_close_timeout=timedelta(seconds=plan.generation_timeout_s),
                    heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_s),
                    retry_policy=_policy(plan.poll_retry),
                )
                checked = await self._check(track, plan, staged)
                self._submission = None
                return checked, submissions - 1
            except ActivityError as exc:
                if is_cancelled_exception(exc):
                    raise
                last_code, last_message = _error_code(exc), _error_message(exc)
                if self._submission is not None and last_code == ErrorCode.TIMEOUT.value:
                    # We stop waiting on a job the provider may still be running: stop it.
                    await self._cancel_provider_job()
                self._submission = None
                failed = f"{link.name} ({last_code})"
        raise GenerationFailed(last_code, f"every provider failed; last: {last_message}")

    async def _on_cancel(self, track: TrackInput) -> None:
        self._publish(status=JobStatus.CANCELLED)
        if self._ledger:
            # Also when the cancel came mid-submit: the cleanup waits for its answer.
            await self._cancel_submissions(track, "cancelled by request")
        else:
            await self._cancel_provider_job()
        await self._finish(track, JobStatus.CANCELLED, None, "cancelled by request")
        await self._notify(track, JobStatus.CANCELLED)

    async def _cancel_provider_job(self) -> None:
        if self._submission is None:
            return
        try:
            await workflow.execute_activity_method(
                GenerationActivities.cancel_generation,
                self._submission,
                start_to_close_timeout=SUBMIT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError:
            workflow.logger.warning("could not cancel the provider's job")
        self._submission = None

    async def _finish(
        self, track: TrackInput, status: JobStatus, code: str | None, message: str | None
    ) -> None:
        await workflow.execute_activity_method(
            JobActivities.finish_job,
            FinishInput(track=track, status=status, error_code=code, message=message),
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=BOOKKEEPING_RETRY,
        )

    async def _notify(
        self, track: TrackInput, status: JobStatus, error_code: str | None = None
    ) -> None:
        """Tell the user's webhook how the job ended; its failure never changes the job."""
        if not track.webhook_url or not self._since(WEBHOOKS_PATCH):
            return
        try:
            await workflow.execute_activity_method(
                WebhookActivities.deliver_webhook,
                WebhookInput(track=track, status=status, error_code=error_code),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=WEBHOOK_RETRY,
            )
        except ActivityError:
            workflow.logger.warning("webhook delivery gave up")

    def _since(self, patch: str) -> bool:
        """Does this run take the change `patch` brought? Current runs take them all."""
        return self._current or workflow.patched(patch)

    def _publish(self, status: JobStatus | None = None, provider: str | None = None) -> None:
        """Keep the JobStatus and Provider search attributes current for operators."""
        if not self._publish_attributes:
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
