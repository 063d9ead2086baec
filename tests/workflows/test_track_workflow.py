"""Every branch of TrackWorkflow, on a real Temporal dev server, with stand-in activities.

The workflow code, its sandbox, timers, retries, signals, queries and cancellation are
Temporal's and ours for real; only what the activities do is scripted (see conftest).
Assertions are about what a user or operator would notice: the final status, which
providers were paid, what the job log is told, and that the refund runs exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError

from core.contracts import (
    JOB_STATUS_ATTRIBUTE,
    PROVIDER_ATTRIBUTE,
    CancelInput,
    CompleteInput,
    ErrorCode,
    FinishInput,
    JobStatus,
    PollStatus,
    Progress,
    ProviderEvent,
    RenditionsInput,
    Step,
    SubmitInput,
    TrackResult,
    WebhookInput,
)
from tests.conftest import eventually
from tests.workflows.conftest import (
    Harness,
    after,
    answer,
    busy_until_cancelled,
    fail,
    make_track,
    provider,
    retry,
    stall,
)
from workflows.track import TrackWorkflow

WEBHOOK = "https://hooks.example.test/soundfoundry"
NOT_DONE = answer(PollStatus(done=False, progress=0.2))


async def progress_of(handle: WorkflowHandle[Any, TrackResult]) -> Progress:
    return await handle.query(TrackWorkflow.progress)


async def failure_of(handle: WorkflowHandle[Any, TrackResult]) -> BaseException | None:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    return failed.value.cause


async def count_events(handle: WorkflowHandle[Any, TrackResult], kind: EventType.ValueType) -> int:
    return [event.event_type for event in (await handle.fetch_history()).events].count(kind)


def submitted_to(harness: Harness) -> list[str]:
    return [call.provider or "" for call in harness.acts.calls_to("submit_generation")]


def finishes(harness: Harness) -> list[FinishInput]:
    return harness.acts.args("finish_job")


# -- the path most tracks take ---------------------------------------------------------
async def test_happy_path_runs_each_step_once_in_order_and_reports_progress(
    harness: Harness,
) -> None:
    plan = harness.plan(["fal", "replicate"])
    release = asyncio.Event()
    harness.acts.script(
        "poll_generation",
        answer(PollStatus(done=False)),  # the submit's own look
        answer(PollStatus(done=False, progress=0.5)),
        after(release, answer(PollStatus(done=True, progress=1.0))),
    )
    track = make_track()
    handle = await harness.start(track)

    # Mid-generation the query shows the provider's own progress, scaled into 0.1-0.6.
    await eventually(lambda: harness.acts.count("poll_generation") == 2, what="second poll")
    during = await progress_of(handle)
    assert (during.step, during.provider, during.attempt) == (Step.GENERATING, "fal", 1)
    assert during.progress == pytest.approx(0.35)
    release.set()

    result = await handle.result()
    assert result == TrackResult(
        track_id=track.track_id,
        status=JobStatus.COMPLETE,
        provider="fal",
        audio_key=f"tracks/{track.user_id}/{track.track_id}.wav",
        cover_key=f"covers/{track.user_id}/{track.track_id}.svg",
    )
    assert harness.acts.names() == [
        "plan_track",
        "submit_generation",
        "look",  # inside the submit: fast models are often done by then
        "poll_generation",
        "poll_generation",
        "download",  # these three are one activity, collect_audio
        "check",
        "store_checked",  # the checked audio, at its final key: no staging copy
        "store_cover",
        "complete_job",
        "master_audio",
        "record_renditions",
    ]
    assert await progress_of(handle) == Progress(
        step=Step.DONE, progress=1.0, provider="fal", attempt=1
    )

    [submit] = harness.acts.args("submit_generation")
    assert isinstance(submit, SubmitInput)
    assert (submit.submission_number, submit.falling_back_from) == (1, None)
    assert submit.max_paid == plan.max_submissions and submit.waiting_since is None
    [complete] = harness.acts.args("complete_job")
    assert isinstance(complete, CompleteInput)
    assert complete.fallbacks == 0
    assert complete.stored.provider == "fal"
    [renditions] = harness.acts.args("record_renditions")
    assert isinstance(renditions, RenditionsInput)
    assert renditions.mastered is not None and renditions.reason is None
    assert [r.format for r in renditions.mastered.renditions] == ["flac", "mp3"]

    # Mastering runs on its own (CPU-bound) queue; bookkeeping as local activities.
    [master] = harness.acts.calls_to("master_audio")
    assert master.task_queue == harness.mastering_task_queue
    local = {c.name for c in harness.acts.calls if c.is_local}
    assert local == {
        "plan_track",
        "store_cover",
        "complete_job",
        "record_renditions",
    }
    assert finishes(harness) == [], "a completed job is not refunded"
    assert harness.acts.count("cancel_submissions") == 0
    assert harness.acts.count("deliver_webhook") == 0, "no webhook_url, no delivery"
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def test_a_job_done_when_the_submit_looks_is_collected_at_once(harness: Harness) -> None:
    """A fast model: no poll, no timer, and one activity downloads, checks and stores."""
    harness.plan(["fal"])
    handle = await harness.start()
    result = await handle.result()

    assert result.status == JobStatus.COMPLETE
    assert harness.acts.names()[:5] == [
        "plan_track",
        "submit_generation",
        "look",
        "download",
        "check",
    ]
    assert harness.acts.count("poll_generation") == 0
    assert await count_events(handle, EventType.EVENT_TYPE_TIMER_STARTED) == 0
    history = (await handle.fetch_history()).events
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled == ["submit_generation", "collect_audio", "master_audio"]
    # No patch marker (nor its TemporalChangeVersion upsert): a workflow change ships as a
    # new build id of the worker deployment, not as a branch every run records.
    patches = [
        e
        for e in history
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert patches == []


async def test_a_retryable_provider_error_is_retried_on_the_same_provider(
    harness: Harness,
) -> None:
    harness.plan(["fal", "replicate"])
    harness.acts.script("submit_generation", fail(ErrorCode.SERVER), answer(None), provider="fal")
    result = await (await harness.start()).result()

    assert result.provider == "fal"
    assert submitted_to(harness) == ["fal", "fal"]
    assert [c.attempt for c in harness.acts.calls_to("submit_generation")] == [1, 2]
    assert [a.submission_number for a in harness.acts.args("submit_generation")] == [1, 1]
    [complete] = harness.acts.args("complete_job")
    assert complete.fallbacks == 0


async def test_a_storage_hiccup_is_retried_and_neither_fails_nor_refunds(
    harness: Harness,
) -> None:
    harness.plan(["fal", "replicate"])

    async def hiccup() -> None:
        raise RuntimeError("storage connection reset")

    harness.acts.script("store_cover", hiccup, answer(None))
    result = await (await harness.start()).result()

    assert result.status == JobStatus.COMPLETE and result.provider == "fal"
    assert [c.attempt for c in harness.acts.calls_to("store_cover")] == [1, 2]
    assert submitted_to(harness) == ["fal"], "bookkeeping trouble never buys another generation"
    assert finishes(harness) == []


# -- the provider chain ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("step", "code", "left_open"),
    [
        ("submit_generation", ErrorCode.FORBIDDEN, False),
        ("poll_generation", ErrorCode.JOB_FAILED, True),
        ("check", ErrorCode.BAD_AUDIO, True),
    ],
    ids=["refused-at-submit", "job-failed", "bad-audio"],
)
async def test_a_provider_failing_for_good_hands_over_to_the_next(
    harness: Harness, step: str, code: ErrorCode, left_open: bool
) -> None:
    harness.plan(["fal", "replicate", "synth"])
    harness.acts.script(step, fail(code), provider="fal")
    track = make_track()
    result = await (await harness.start(track)).result()

    assert result.status == JobStatus.COMPLETE and result.provider == "replicate"
    assert submitted_to(harness) == ["fal", "replicate"], "synth is never reached"
    assert harness.acts.count(step, "fal") == 1, f"{code} must not be retried"
    fallback = harness.acts.args("submit_generation")[1]
    assert fallback.falling_back_from == f"fal ({code.value})"  # the job log's fallback line
    assert fallback.submission_number == 2
    [complete] = harness.acts.args("complete_job")
    assert complete.fallbacks == 1 and complete.stored.provider == "replicate"

    # A paid job fal may still run is cancelled before replicate starts; once replicate
    # delivers, anything an earlier link left open is swept without waiting on it.
    cleanups: list[CancelInput] = harness.acts.args("cancel_submissions")
    expected = [f"fal failed: {code.value}"] if left_open else []
    expected.append("track finished by another provider")
    assert [c.reason for c in cleanups] == expected
    assert all(c.resolve_unknown is False for c in cleanups)
    if left_open:
        names = harness.acts.names()
        second_submit = [i for i, name in enumerate(names) if name == "submit_generation"][1]
        assert names.index("cancel_submissions") < second_submit
    assert finishes(harness) == []


async def test_skipped_providers_are_not_tried_and_a_local_one_is_not_polled(
    harness: Harness,
) -> None:
    harness.plan(
        [
            provider("fal", skip="unconfigured"),
            provider("replicate", skip="no vocals"),
            provider("synth", remote=False),
        ]
    )
    handle = await harness.start()
    result = await handle.result()

    assert result.provider == "synth"
    assert submitted_to(harness) == ["synth"]
    [submit] = harness.acts.args("submit_generation")
    assert submit.submission_number == 1 and submit.falling_back_from is None
    assert harness.acts.count("poll_generation") == 0
    assert (await progress_of(handle)).attempt == 1
    [complete] = harness.acts.args("complete_job")
    assert complete.fallbacks == 0


async def test_every_provider_failing_fails_the_job_and_refunds_once(harness: Harness) -> None:
    harness.plan(["fal", "replicate"])
    harness.acts.script("submit_generation", fail(ErrorCode.UNAUTHORIZED), provider="fal")
    harness.acts.script(
        "poll_generation", fail(ErrorCode.JOB_FAILED, "model crashed"), provider="replicate"
    )
    handle = await harness.start(make_track(webhook_url=WEBHOOK))
    cause = await failure_of(handle)

    assert isinstance(cause, ApplicationError)
    assert cause.type == ErrorCode.JOB_FAILED.value and cause.non_retryable
    assert submitted_to(harness) == ["fal", "replicate"]
    [finish] = finishes(harness)
    assert finish.status == JobStatus.FAILED
    assert finish.error_code == ErrorCode.JOB_FAILED.value
    assert finish.message == "every provider failed; last: job_failed: model crashed"
    for step in ("download", "store_checked", "complete_job", "master_audio"):
        assert harness.acts.count(step) == 0, step
    assert [c.reason for c in harness.acts.args("cancel_submissions")] == [
        "replicate failed: job_failed"
    ]
    [webhook] = harness.acts.args("deliver_webhook")
    assert isinstance(webhook, WebhookInput)
    assert (webhook.status, webhook.error_code) == (JobStatus.FAILED, "job_failed")
    assert harness.acts.names().index("finish_job") < harness.acts.names().index("deliver_webhook")
    assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED


async def test_no_capable_provider_fails_without_paying_anyone(harness: Harness) -> None:
    harness.plan(
        [provider("fal", skip="unconfigured"), provider("replicate", skip="lyrics unsupported")]
    )
    cause = await failure_of(await harness.start())

    assert isinstance(cause, ApplicationError) and cause.type == "no_capable_provider"
    assert harness.acts.names() == ["plan_track", "finish_job"]
    [finish] = finishes(harness)
    assert (finish.status, finish.error_code) == (JobStatus.FAILED, "no_capable_provider")
    assert finish.message is not None
    assert "fal: unconfigured; replicate: lyrics unsupported" in finish.message


async def test_the_submission_cap_ends_the_chain(harness: Harness) -> None:
    harness.plan(["fal", "replicate", "synth"], max_submissions=2)
    harness.acts.script("poll_generation", fail(ErrorCode.JOB_FAILED), provider="fal")
    harness.acts.script("submit_generation", fail(ErrorCode.SUBMISSION_CAP), provider="replicate")
    cause = await failure_of(await harness.start())

    assert isinstance(cause, ApplicationError) and cause.type == "submission_cap"
    # The ledger (behind submit) enforces the cap; the workflow hands it the plan's
    # bound and stops at its answer rather than paying the next provider.
    assert submitted_to(harness) == ["fal", "replicate"]
    assert {a.max_paid for a in harness.acts.args("submit_generation")} == {2}
    [finish] = finishes(harness)
    assert (finish.status, finish.error_code) == (JobStatus.FAILED, "submission_cap")


@pytest.mark.parametrize("ambiguous_fallback", [True, False])
async def test_an_ambiguous_submit_falls_back_only_if_the_plan_allows(
    harness: Harness, ambiguous_fallback: bool
) -> None:
    harness.plan(["fal", "replicate"], ambiguous_fallback=ambiguous_fallback)
    harness.acts.script("submit_generation", fail(ErrorCode.AMBIGUOUS), provider="fal")
    handle = await harness.start()

    if ambiguous_fallback:
        assert (await handle.result()).provider == "replicate"
        assert submitted_to(harness) == ["fal", "replicate"]
        assert finishes(harness) == []
    else:
        # fal may have been paid: trying replicate too could charge twice.
        cause = await failure_of(handle)
        assert isinstance(cause, ApplicationError) and cause.type == "ambiguous_submit"
        assert submitted_to(harness) == ["fal"]
        [finish] = finishes(harness)
        assert finish.error_code == "ambiguous_submit"


async def test_a_provider_that_never_finishes_times_out_and_is_cancelled(
    harness: Harness,
) -> None:
    harness.plan(["fal", "replicate"], generation_timeout_s=1.0)
    harness.acts.script("poll_generation", NOT_DONE, provider="fal")
    result = await (await harness.start()).result()

    assert result.provider == "replicate"
    looks = harness.acts.count("look", "fal") + harness.acts.count("poll_generation", "fal")
    assert looks >= 2, "polled on a timer meanwhile"
    assert harness.acts.count("download", "fal") == 0
    assert [c.reason for c in harness.acts.args("cancel_submissions")] == [
        "fal failed: timeout",
        "track finished by another provider",
    ]
    assert harness.acts.args("submit_generation")[1].falling_back_from == "fal (timeout)"


async def test_a_worker_lost_mid_fetch_reruns_the_step_without_paying_again(
    harness: Harness,
) -> None:
    # One attempt per step, so the heartbeat timeout exhausts fetch's retry budget.
    harness.plan(["fal", "replicate"], heartbeat_timeout_s=1.0, poll_retry=retry(1))
    harness.acts.script("download", stall, answer(None), provider="fal")
    result = await (await harness.start()).result()

    assert result.provider == "fal"
    assert submitted_to(harness) == ["fal"], "the provider's job is fetched again, not re-bought"
    assert harness.acts.count("download", "fal") == 2
    assert harness.acts.count("cancel_submissions") == 0


# -- waiting on the provider -----------------------------------------------------------
async def test_a_provider_at_capacity_holds_the_track_then_takes_it(harness: Harness) -> None:
    harness.plan(["fal", "replicate"])
    room = asyncio.Event()
    harness.acts.script(
        "submit_generation",
        fail(ErrorCode.PROVIDER_BUSY),
        fail(ErrorCode.PROVIDER_BUSY),
        after(room),
        provider="fal",
    )
    handle = await harness.start()
    await eventually(lambda: harness.acts.count("submit_generation") >= 3, what="third submit")
    held = await progress_of(handle)
    assert (held.step, held.provider) == (Step.PROVIDER_QUEUE, "fal")
    room.set()
    result = await handle.result()

    assert result.provider == "fal", "being busy is not a failure: no fallback"
    submits: list[SubmitInput] = harness.acts.args("submit_generation")
    assert [s.provider for s in submits] == ["fal"] * 3
    assert {s.submission_number for s in submits} == {1}
    # Each ask is a new activity after a timer, not a retry; all carry when waiting began.
    assert [c.attempt for c in harness.acts.calls_to("submit_generation")] == [1, 1, 1]
    assert submits[0].waiting_since is None
    assert submits[1].waiting_since is not None
    assert submits[1].waiting_since == submits[2].waiting_since
    assert harness.acts.count("cancel_submissions") == 0 and finishes(harness) == []


async def test_a_verified_provider_webhook_ends_the_wait_early(harness: Harness) -> None:
    # Waits grow 1 s, 2 s, ... (capped at poll_interval_s): the second is cut short.
    harness.plan(["fal"], poll_interval_s=30.0)
    harness.acts.script("poll_generation", NOT_DONE, provider="fal")
    handle = await harness.start()

    started, fired = EventType.EVENT_TYPE_TIMER_STARTED, EventType.EVENT_TYPE_TIMER_FIRED

    async def timers_started(n: int) -> bool:
        return await count_events(handle, started) >= n

    await eventually(lambda: timers_started(1), what="first wait")
    # A webhook about some other submission must not wake this one.
    await handle.signal(
        TrackWorkflow.provider_event,
        ProviderEvent(token="someone-else", provider="fal", run_id="x", state="succeeded"),
    )
    await eventually(lambda: timers_started(2), what="second wait")
    assert await count_events(handle, fired) == 1, "the first wait ran its full second"
    await handle.signal(
        TrackWorkflow.provider_event,
        ProviderEvent(token="fal-token-1", provider="fal", run_id="fal-run-1", state="succeeded"),
    )
    result = await handle.result()

    assert result.status == JobStatus.COMPLETE
    # The verified delivery is the provider's word: collected without another poll
    # (every poll said "not done").
    assert harness.acts.count("look") == 1
    assert harness.acts.count("poll_generation") == 1
    assert await count_events(handle, fired) == 1, "the second wait ended on the signal"
    assert await count_events(handle, EventType.EVENT_TYPE_TIMER_CANCELED) == 1


async def timers_started(handle: WorkflowHandle[Any, TrackResult]) -> bool:
    return await count_events(handle, EventType.EVENT_TYPE_TIMER_STARTED) > 0


async def timer_lengths(handle: WorkflowHandle[Any, TrackResult]) -> list[float]:
    history = await handle.fetch_history()
    return [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]


async def deliver(
    handle: WorkflowHandle[Any, TrackResult], state: str, *, after_s: float = 0.0
) -> TrackResult:
    """Once the track waits, the verified webhook of its fal job; then its result."""
    await eventually(lambda: timers_started(handle), what="the wait")
    await asyncio.sleep(after_s)
    await handle.signal(
        TrackWorkflow.provider_event,
        ProviderEvent(token="fal-token-1", provider="fal", run_id="fal-run-1", state=state),
    )
    return await handle.result()


async def test_a_track_expecting_a_webhook_waits_for_it_and_trusts_it(harness: Harness) -> None:
    # Without a webhook this plan would poll every 0.1 s.
    harness.plan(["fal"], poll_interval_s=0.1, webhook_poll_interval_s=30.0)
    harness.acts.webhook = True
    harness.acts.script("poll_generation", NOT_DONE, provider="fal")
    handle = await harness.start()
    # Half a second of waiting: five polls' worth at the plain interval.
    result = await deliver(handle, "succeeded", after_s=0.5)

    assert result.status == JobStatus.COMPLETE
    # No look, no poll: the delivery ended the wait and is not re-asked.
    assert harness.acts.count("look") == 0
    assert harness.acts.count("poll_generation") == 0
    assert await timer_lengths(handle) == [30.0]


async def test_a_lost_webhook_is_covered_by_the_safety_poll(harness: Harness) -> None:
    harness.plan(["fal"], poll_interval_s=0.1, webhook_poll_interval_s=0.5)
    harness.acts.webhook = True
    harness.acts.script("poll_generation", NOT_DONE, answer(None), provider="fal")
    handle = await harness.start()
    result = await handle.result()

    assert result.status == JobStatus.COMPLETE
    # Polls only at the safety interval: no look, no fast start, no 0.1 s polls.
    assert harness.acts.count("look") == 0
    assert harness.acts.count("poll_generation") == 2
    assert await timer_lengths(handle) == [0.5, 0.5]


async def test_a_webhook_saying_failed_is_confirmed_by_a_poll(harness: Harness) -> None:
    harness.plan(["fal"], poll_interval_s=0.1, webhook_poll_interval_s=30.0)
    harness.acts.webhook = True
    harness.acts.script("poll_generation", answer(None), provider="fal")
    result = await deliver(await harness.start(), "failed")

    # The poll is what reads the provider's error (here: it finished after all).
    assert result.status == JobStatus.COMPLETE
    assert harness.acts.count("poll_generation") == 1


# -- cancellation ----------------------------------------------------------------------
@pytest.mark.parametrize("phase", [Step.PROVIDER_QUEUE, Step.GENERATING])
async def test_cancel_while_waiting_on_the_provider_cleans_up_and_refunds(
    harness: Harness, phase: Step
) -> None:
    harness.plan(["fal", "replicate"])
    if phase == Step.PROVIDER_QUEUE:
        harness.acts.script("submit_generation", fail(ErrorCode.PROVIDER_BUSY), provider="fal")
    else:
        harness.acts.script("poll_generation", NOT_DONE, provider="fal")
    handle = await harness.start(make_track(webhook_url=WEBHOOK))

    async def waiting() -> bool:
        # GENERATING is shown from before the submit: wait for a look at the provider.
        polled = phase != Step.GENERATING or harness.acts.count("poll_generation") > 0
        return polled and (await progress_of(handle)).step == phase

    await eventually(waiting, what=f"step {phase}")
    await handle.cancel()
    cause = await failure_of(handle)

    assert isinstance(cause, CancelledError)
    [cleanup] = harness.acts.args("cancel_submissions")
    assert isinstance(cleanup, CancelInput)
    # A cancel may land mid-submit: the cleanup waits for that submit's outcome.
    assert cleanup.reason == "cancelled by request" and cleanup.resolve_unknown is True
    [finish] = finishes(harness)
    assert (finish.status, finish.error_code) == (JobStatus.CANCELLED, None)
    [webhook] = harness.acts.args("deliver_webhook")
    assert (webhook.status, webhook.error_code) == (JobStatus.CANCELLED, None)
    names = harness.acts.names()
    assert names.index("cancel_submissions") < names.index("finish_job")
    assert set(submitted_to(harness)) == {"fal"}, "a cancel is not a reason to fall back"
    for step in ("download", "store_checked", "complete_job"):
        assert harness.acts.count(step) == 0, step
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED


async def test_cancel_during_mastering_leaves_the_track_complete(harness: Harness) -> None:
    harness.plan(["fal"])
    harness.acts.script("master_audio", busy_until_cancelled)
    handle = await harness.start(make_track(webhook_url=WEBHOOK))
    await eventually(lambda: harness.acts.count("master_audio") == 1, what="mastering")
    await handle.cancel()
    result = await handle.result()

    assert result.status == JobStatus.COMPLETE and result.provider == "fal"
    assert harness.acts.cancelled == ["master_audio"], "the running mastering was stopped"
    [renditions] = harness.acts.args("record_renditions")
    assert renditions.mastered is None and renditions.reason == "cancelled by request"
    # Renditions are recorded only once mastering has acknowledged the cancel.
    assert harness.acts.names()[-2:] == ["record_renditions", "deliver_webhook"]
    assert finishes(harness) == [], "a finished track is not refunded"
    assert harness.acts.count("cancel_submissions") == 0
    [webhook] = harness.acts.args("deliver_webhook")
    assert webhook.status == JobStatus.COMPLETE
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED


async def test_a_mastering_failure_leaves_the_track_complete(harness: Harness) -> None:
    harness.plan(["fal"])
    harness.acts.script("master_audio", fail(ErrorCode.BAD_AUDIO, "not decodable"))
    result = await (await harness.start()).result()

    assert result.status == JobStatus.COMPLETE
    assert harness.acts.count("master_audio") == 1, "a non-retryable error is not retried"
    [renditions] = harness.acts.args("record_renditions")
    assert renditions.mastered is None
    assert renditions.reason == "mastering failed: bad_audio: not decodable"
    assert finishes(harness) == []


# -- telling the user and the operator -------------------------------------------------
@pytest.mark.parametrize("receiver_up", [True, False], ids=["receiver-up", "receiver-down"])
async def test_the_users_webhook_is_told_once_and_cannot_change_the_outcome(
    harness: Harness, receiver_up: bool
) -> None:
    harness.plan(["fal"])
    if not receiver_up:
        harness.acts.script("deliver_webhook", fail(ErrorCode.FORBIDDEN, "receiver said 403"))
    track = make_track(webhook_url=WEBHOOK)
    result = await (await harness.start(track)).result()

    assert result.status == JobStatus.COMPLETE
    [webhook] = harness.acts.args("deliver_webhook")
    assert (webhook.track.webhook_url, webhook.status) == (WEBHOOK, JobStatus.COMPLETE)
    assert webhook.error_code is None
    # Told after mastering settled, so the user can fetch the final files at once.
    assert harness.acts.names()[-1] == "deliver_webhook"
    assert finishes(harness) == []


@pytest.mark.parametrize("outcome", [JobStatus.COMPLETE, JobStatus.FAILED])
async def test_operators_see_status_and_provider_as_search_attributes(
    harness: Harness, outcome: JobStatus
) -> None:
    # The session's dev server registers the attributes (tests.fixtures_services).
    harness.plan(["fal", "replicate"], search_attributes=True)
    harness.acts.script("submit_generation", fail(ErrorCode.FORBIDDEN), provider="fal")
    if outcome == JobStatus.FAILED:
        harness.acts.script("check", fail(ErrorCode.BAD_AUDIO), provider="replicate")
    handle = await harness.start()
    if outcome == JobStatus.FAILED:
        await failure_of(handle)
    else:
        await handle.result()

    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(JOB_STATUS_ATTRIBUTE) == outcome.value
    assert attributes.get(PROVIDER_ATTRIBUTE) == "replicate"


@pytest.mark.parametrize("step", ["plan_track", "complete_job"])
async def test_a_job_that_moved_stops_the_run_without_paying_or_telling(
    harness: Harness, step: str
) -> None:
    """plan_track (a cancel beat the reconciler's restart) or complete_job (a cancel landed
    after the audio was collected) finds the job no longer this run's: the run ends
    there. Whoever moved the job recorded, refunded and told; this run submits nothing
    more, finishes nothing, masters nothing and tells the user nothing."""
    harness.plan(["fal"])
    harness.acts.script(step, fail(ErrorCode.JOB_MOVED, "the job ended"))
    handle = await harness.start(make_track(webhook_url=WEBHOOK))
    cause = await failure_of(handle)

    assert isinstance(cause, ApplicationError)
    assert (cause.type, cause.non_retryable) == (ErrorCode.JOB_MOVED.value, True)
    assert harness.acts.count(step) == 1, "retried a step whose job has moved"
    for later in ("finish_job", "deliver_webhook", "master_audio"):
        assert harness.acts.count(later) == 0, later
    if step == "plan_track":
        assert harness.acts.names() == ["plan_track"]
