"""The real TrackWorkflow on a real Temporal server, with stand-ins at the activity boundary.

Temporal dispatches an activity by its name and carries its payload through the pydantic
converter, so a plain class whose methods are `@activity.defn(name=...)` with the real
names and `core.contracts` types takes the place of the database, storage and providers.
Each stand-in records its calls and answers from a per-test script, so every branch of
the workflow runs in well under a second without Postgres, S3 or a provider.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import pytest_asyncio
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkerDeploymentVersion
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.worker import Worker, WorkerDeploymentConfig

from core.contracts import (
    NON_RETRYABLE,
    AudioInfo,
    CancelInput,
    CheckedAudio,
    CollectInput,
    CompleteInput,
    CoverInput,
    ErrorCode,
    FinishInput,
    GenerationPlan,
    GenerationRequest,
    MasteredAudio,
    MasterInput,
    PollStatus,
    ProviderPlan,
    Rendition,
    RenditionsInput,
    RetryBounds,
    StoredAudio,
    Submission,
    SubmitInput,
    TrackInput,
    TrackResult,
    WebhookInput,
    track_workflow_id,
)
from core.worker_deployment import promote_if_first
from tests.services import TemporalDevServer
from workflows.track import TrackWorkflow

T = TypeVar("T")
# TrackWorkflow is PINNED, so its workers are versioned, as in production: every
# harness's task queues join this one version of a deployment of the tests' own.
HARNESS_VERSION = WorkerDeploymentVersion(
    deployment_name="soundfoundry-workflow-tests", build_id=f"harness-{uuid.uuid4().hex[:8]}"
)
# What a scripted step does: awaited in the activity, it returns the answer (None: the
# stand-in's ordinary answer) or raises.
Behaviour = Callable[[], Awaitable[Any]]


def fail(code: ErrorCode, message: str | None = None) -> Behaviour:
    """Raise as the real activities do: typed, and non-retryable when another attempt
    at the same provider cannot help (activities.recording)."""

    async def raise_it() -> NoReturn:
        raise ApplicationError(
            message or f"stand-in says {code.value}",
            type=code.value,
            non_retryable=code in NON_RETRYABLE,
        )

    return raise_it


def answer(value: Any) -> Behaviour:
    async def give() -> Any:
        return value

    return give


def after(event: asyncio.Event, then: Behaviour | None = None) -> Behaviour:
    """Hold the activity until the test sets `event`, then behave as `then`."""

    async def held() -> Any:
        await event.wait()
        return await then() if then else None

    return held


async def stall() -> NoReturn:
    """A worker that hangs: no heartbeat, no answer (the server times the attempt out)."""
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def busy_until_cancelled() -> NoReturn:
    """Long work that heartbeats, so a cancel request reaches it."""
    while True:
        activity.heartbeat()
        await asyncio.sleep(0.05)


@dataclass
class Call:
    name: str
    arg: Any
    provider: str | None
    task_queue: str
    is_local: bool
    attempt: int


def retry(max_attempts: int = 3) -> RetryBounds:
    return RetryBounds(max_attempts=max_attempts, initial_interval_s=0.1, max_interval_s=0.2)


def provider(name: str, *, skip: str | None = None, remote: bool = True) -> ProviderPlan:
    return ProviderPlan(name=name, model=f"{name}-model", skip_reason=skip, remote=remote)


def make_track(*, webhook_url: str | None = None) -> TrackInput:
    return TrackInput(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        request=GenerationRequest(prompt="warm ambient pad", duration_s=8),
        webhook_url=webhook_url,
    )


class StandIns:
    """Every activity TrackWorkflow runs, under its real name, answering from a script."""

    def __init__(self, plan: GenerationPlan) -> None:
        self.plan = plan
        self.calls: list[Call] = []
        # Activities that saw a cancel request arrive while they ran.
        self.cancelled: list[str] = []
        self._scripts: dict[tuple[str, str | None], list[Behaviour]] = {}
        self._submitted: dict[str, int] = {}
        # Submissions go out with a webhook URL (PROVIDER_WEBHOOKS_ENABLED).
        self.webhook = False

    def script(self, name: str, *steps: Behaviour, provider: str | None = None) -> None:
        """One behaviour per call, in turn; the last one then repeats."""
        self._scripts[(name, provider)] = list(steps)

    # -- reading what happened ---------------------------------------------------------
    def names(self) -> list[str]:
        return [call.name for call in self.calls]

    def calls_to(self, name: str, provider: str | None = None) -> list[Call]:
        return [
            c for c in self.calls if c.name == name and (provider is None or c.provider == provider)
        ]

    def args(self, name: str) -> list[Any]:
        return [call.arg for call in self.calls_to(name)]

    def count(self, name: str, provider: str | None = None) -> int:
        return len(self.calls_to(name, provider))

    # -- the activities ----------------------------------------------------------------
    async def _run(
        self,
        name: str,
        arg: Any,
        provider: str | None,
        default: Callable[[], T],
        *,
        script: str | None = None,
    ) -> T:
        """Record a call named `name` and answer from the script of `script` (or `name`)."""
        info = activity.info()
        self.calls.append(Call(name, arg, provider, info.task_queue, info.is_local, info.attempt))
        script = script or name
        steps = self._scripts.get((script, provider)) or self._scripts.get((script, None))
        if not steps:
            return default()
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        try:
            outcome = await step()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        return default() if outcome is None else outcome  # type: ignore[no-any-return]

    @activity.defn(name="plan_track")
    async def plan_track(self, track: TrackInput) -> GenerationPlan:
        return await self._run("plan_track", track, None, lambda: self.plan)

    @activity.defn(name="submit_generation")
    async def submit_generation(self, submit: SubmitInput) -> Submission:
        def accepted() -> Submission:
            number = self._submitted[submit.provider] = self._submitted.get(submit.provider, 0) + 1
            return Submission(
                track_id=submit.track.track_id,
                job_id=submit.track.job_id,
                provider=submit.provider,
                run_id=f"{submit.provider}-run-{number}",
                request=submit.track.request,
                token=f"{submit.provider}-token-{number}",
                webhook=self.webhook,
            )

        submission = await self._run("submit_generation", submit, submit.provider, accepted)
        if submission.webhook:  # the real submit awaits the delivery
            return submission
        # The real submit looks once through the provider's poll: recorded as "look", it
        # answers from the poll script; an error there is for the workflow's polls to see.
        try:
            status = await self._run(
                "look",
                submission,
                submission.provider,
                lambda: PollStatus(done=True, progress=1.0),
                script="poll_generation",
            )
        except ApplicationError:
            return submission
        return submission.model_copy(update={"done": status.done})

    @activity.defn(name="poll_generation")
    async def poll_generation(self, submission: Submission) -> PollStatus:
        return await self._run(
            "poll_generation",
            submission,
            submission.provider,
            lambda: PollStatus(done=True, progress=1.0),
        )

    @activity.defn(name="collect_audio")
    async def collect_audio(self, collect: CollectInput) -> CheckedAudio:
        """The download, the check and the store of the real collect_audio, each recorded
        (as "download", "check" and "store_checked") and answering from its own script."""
        submission, track = collect.submission, collect.track
        downloaded = await self._run(
            "download",
            collect,
            submission.provider,
            lambda: StoredAudio(
                provider=submission.provider,
                run_id=submission.run_id,
                key=f"tracks/{track.user_id}/{track.track_id}.wav",
                extension="wav",
                content_type="audio/wav",
                size_bytes=1_411_200,
            ),
        )
        info = AudioInfo(
            duration_s=float(track.request.duration_s),
            sample_rate=44_100,
            channels=2,
            peak_dbfs=-1.0,
            rms_dbfs=-16.0,
        )
        checked = await self._run(
            "check",
            collect,
            submission.provider,
            lambda: CheckedAudio(audio=downloaded, info=info),
        )
        key = await self._run(
            "store_checked", collect, submission.provider, lambda: checked.audio.key
        )
        return checked.model_copy(update={"audio": checked.audio.model_copy(update={"key": key})})

    @activity.defn(name="cancel_submissions")
    async def cancel_submissions(self, cancel: CancelInput) -> list[str]:
        return await self._run("cancel_submissions", cancel, None, list)

    @activity.defn(name="store_cover")
    async def store_cover(self, job: CoverInput) -> str:
        key = f"covers/{job.track.user_id}/{job.track.track_id}.svg"
        return await self._run("store_cover", job, None, lambda: key)

    @activity.defn(name="complete_job")
    async def complete_job(self, done: CompleteInput) -> None:
        await self._run("complete_job", done, None, lambda: None)

    @activity.defn(name="finish_job")
    async def finish_job(self, finish: FinishInput) -> None:
        await self._run("finish_job", finish, None, lambda: None)

    @activity.defn(name="master_audio")
    async def master_audio(self, job: MasterInput) -> MasteredAudio:
        def mastered() -> MasteredAudio:
            base = job.source_key.rsplit(".", 1)[0]
            common: dict[str, Any] = {"sample_rate": 44_100, "channels": 2, "duration_s": 8.0}
            return MasteredAudio(
                source_key=job.source_key,
                renditions=[
                    Rendition(
                        format="flac",
                        key=f"{base}.flac",
                        content_type="audio/flac",
                        size_bytes=900_000,
                        **common,
                    ),
                    Rendition(
                        format="mp3",
                        key=f"{base}.mp3",
                        content_type="audio/mpeg",
                        bitrate_kbps=192,
                        size_bytes=190_000,
                        **common,
                    ),
                ],
                loudness_before_lufs=-20.0,
                true_peak_before_dbtp=-3.0,
                loudness_after_lufs=-14.0,
                true_peak_after_dbtp=-1.0,
                gain_db=6.0,
            )

        return await self._run("master_audio", job, None, mastered)

    @activity.defn(name="record_renditions")
    async def record_renditions(self, job: RenditionsInput) -> bool:
        return await self._run("record_renditions", job, None, lambda: job.mastered is not None)

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, delivery: WebhookInput) -> None:
        await self._run("deliver_webhook", delivery, None, lambda: None)

    def track_queue(self) -> list[Callable[..., Any]]:
        return [
            self.plan_track,
            self.submit_generation,
            self.poll_generation,
            self.collect_audio,
            self.cancel_submissions,
            self.store_cover,
            self.complete_job,
            self.finish_job,
            self.record_renditions,
            self.deliver_webhook,
        ]


@dataclass
class Harness:
    """One test's task queues (track and mastering), their workers and its stand-ins."""

    client: Client
    task_queue: str = field(default_factory=lambda: f"wf-{uuid.uuid4().hex[:12]}")
    acts: StandIns = field(init=False)
    handles: list[WorkflowHandle[Any, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acts = StandIns(self.make_plan(["fal"]))

    @property
    def mastering_task_queue(self) -> str:
        return f"{self.task_queue}-mastering"

    def make_plan(self, providers: list[str | ProviderPlan], **overrides: Any) -> GenerationPlan:
        """Short intervals so a test waits on timers for tenths of a second, not minutes."""
        values: dict[str, Any] = {
            "providers": [p if isinstance(p, ProviderPlan) else provider(p) for p in providers],
            "max_submissions": 4,
            "submit_retry": retry(),
            "poll_retry": retry(),
            "generation_timeout_s": 30.0,
            "heartbeat_timeout_s": 5.0,
            "search_attributes": False,
            "poll_interval_s": 0.1,
            "webhook_poll_interval_s": 30.0,
            "request_timeout_s": 5.0,
            "resolve_window_s": 1.0,
            "mastering_task_queue": self.mastering_task_queue,
        }
        values.update(overrides)
        return GenerationPlan(**values)

    def plan(self, providers: list[str | ProviderPlan], **overrides: Any) -> GenerationPlan:
        """Set the plan `plan_track` hands the workflow."""
        self.acts.plan = self.make_plan(providers, **overrides)
        return self.acts.plan

    async def start(self, track: TrackInput | None = None) -> WorkflowHandle[Any, TrackResult]:
        track = track or make_track()
        handle = await self.client.start_workflow(
            TrackWorkflow.run,
            track,
            id=track_workflow_id(track.track_id),
            task_queue=self.task_queue,
            execution_timeout=timedelta(minutes=2),
        )
        self.handles.append(handle)
        return handle

    def workers(self) -> list[Worker]:
        common: dict[str, Any] = {
            "deployment_config": WorkerDeploymentConfig(
                version=HARNESS_VERSION, use_worker_versioning=True
            ),
            # A cancel reaches a heartbeating stand-in within a tenth of a second.
            "max_heartbeat_throttle_interval": timedelta(milliseconds=100),
            "default_heartbeat_throttle_interval": timedelta(milliseconds=100),
        }
        return [
            Worker(
                self.client,
                task_queue=self.task_queue,
                workflows=[TrackWorkflow],
                activities=self.acts.track_queue(),
                **common,
            ),
            Worker(
                self.client,
                task_queue=self.mastering_task_queue,
                activities=[self.acts.master_audio],
                **common,
            ),
        ]

    async def stop_leftovers(self) -> None:
        """A failed test must not leave its workflow running on the shared server."""
        for handle in self.handles:
            try:
                description = await handle.describe()
                if description.status == WorkflowExecutionStatus.RUNNING:
                    await handle.terminate("test ended")
            except RPCError:
                pass


@pytest_asyncio.fixture
async def harness(temporal_server: TemporalDevServer) -> AsyncIterator[Harness]:
    """Workers on fresh task queues of the session's dev server (tests.fixtures_services),
    running the real TrackWorkflow in its default sandbox and this test's stand-ins."""
    built = Harness(temporal_server.client)
    async with AsyncExitStack() as stack:
        for worker in built.workers():
            await stack.enter_async_context(worker)
        # Once, for the session's first harness: the version routes new runs from then on.
        await promote_if_first(built.client, HARNESS_VERSION)
        try:
            yield built
        finally:
            await built.stop_leftovers()
