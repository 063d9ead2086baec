"""Pay once, leave nothing running: faults placed where they cost the most.

Every fault here strikes after the provider acted and before we recorded it, or while
the request is out: the fakes create the job and then lose, delay or garble the answer,
and workers are SIGKILLed mid-request. Real `soundfoundry worker` processes, the real
fal and Replicate clients, Temporal, Postgres and S3 do the rest.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from core.contracts import SubmissionState
from core.models import Plan
from domain.tracks.submissions import SubmissionLedger
from tests.conftest import Stack, eventually
from tests.e2e.test_operators import reconciler, temporal
from tests.fakes import Drop, Fail, FailAfter, FakeServer, Huge, Job, Late, Stall
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import extra_overrides, fal, replicate, stack_overrides
from tests.fakes.replicate_server import ReplicateFake
from tests.workflows.histories import export_and_replay

__all__ = ["extra_overrides", "fal", "reconciler", "replicate", "stack_overrides"]

SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"
REPLICATE_ONLY = {"music_providers": ["replicate"], "provider_request_timeout_s": 2}


async def logs_of(stack: Stack, job_id: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    logs: list[dict[str, Any]] = (
        await stack.http.get(f"/api/jobs/{job_id}/logs", headers=auth)
    ).json()
    return logs


def _ambiguous_count(worker: Worker, provider: str) -> float:
    """What the worker's /metrics says, as Prometheus would scrape it."""
    text = httpx.get(worker.metrics_url, timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "provider_ambiguous_submissions_total"
                and sample.labels.get("provider") == provider
            ):
                return sample.value
    return 0.0


async def ledger_states(stack: Stack, job_id: str) -> list[SubmissionState]:
    rows = await SubmissionLedger(stack.store.sessions).for_job(uuid.UUID(job_id))
    return [row.state for row in rows]


async def assert_paid_once(
    stack: Stack, replicate: ReplicateFake, created: dict[str, Any], user_id: Any, why: str
) -> None:
    """One prediction at Replicate, its ledger row FINISHED, and the user charged once."""
    assert replicate.submissions == 1, why
    assert await ledger_states(stack, created["job_id"]) == [SubmissionState.FINISHED]
    assert await stack.credits(user_id) == 50 - created["credits_required"]


@pytest.fixture
def start_worker() -> bool:
    """Workers here are `soundfoundry worker` processes, so they can be killed."""
    return False


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    metrics_url: str


class Workers:
    """`soundfoundry worker` processes on the stack's task queue, to be killed at will."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> Worker:
        with socket.socket() as probe:  # a free port for this worker's /metrics
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen(
            [str(SOUNDFOUNDRY), "worker"],
            env={**self.env, "WORKER_METRICS_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return Worker(process, f"http://127.0.0.1:{port}/metrics")

    async def spawn_ready(self, timeout_s: float = 60) -> Worker:
        """A worker that is polling its task queue (it logs "worker ready")."""
        worker = self.spawn()
        assert worker.process.stdout is not None
        stdout = worker.process.stdout

        def wait_ready() -> None:
            for line in stdout:
                if b"worker ready" in line:
                    return
            raise AssertionError("the worker exited before it was ready")

        await asyncio.wait_for(asyncio.to_thread(wait_ready), timeout_s)
        # Keep draining its output so a chatty worker never blocks on a full pipe.
        threading.Thread(target=stdout.read, daemon=True).start()
        return worker

    def kill(self, worker: Worker) -> None:
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


@pytest.fixture
def workers(stack: Stack) -> Iterator[Workers]:
    pool = Workers(stack.env)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest_asyncio.fixture
async def worker(workers: Workers) -> Worker:
    """One running worker process, for tests that do not kill it."""
    return await workers.spawn_ready()


# -- a lost answer is found, never re-sent --------------------------------------------


@pytest.mark.parametrize("extra_overrides", [REPLICATE_ONLY])
async def test_a_failing_look_inside_the_submit_keeps_the_paid_job(
    stack: Stack, replicate: ReplicateFake, extra_overrides: Any, worker: Worker
) -> None:
    """The submit looks at its new job once before answering. That look comes after the
    provider took (and charged for) the job: its failing must neither fail the submit nor
    send it again; the workflow's own polls find the job."""
    # More 5xx than the library retries: the look itself fails.
    replicate.script(poll=[Fail(500, times=3)], jobs=[Job()])
    user_id, auth = await stack.user(credits=10)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=60)
    assert job["status"] == "COMPLETE", job
    assert replicate.submissions == 1
    events = [e["event"] for e in await logs_of(stack, created["job_id"], auth)]
    assert events.count("submitted") == 1 and "submitted.failed" not in events
    assert await ledger_states(stack, created["job_id"]) == [SubmissionState.FINISHED]
    assert await stack.credits(user_id) == 10 - created["credits_required"]


@pytest.mark.parametrize(
    "fault",
    [Drop(), Late(seconds=4), FailAfter(502), Huge()],
    ids=["connection-cut", "answer-after-timeout", "gateway-502", "answer-too-large"],
)
@pytest.mark.parametrize("extra_overrides", [REPLICATE_ONLY])
async def test_lost_replicate_answer_is_found_not_resent(
    stack: Stack, replicate: ReplicateFake, fault: Any, extra_overrides: Any, worker: Worker
) -> None:
    replicate.script(submit=[fault])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=60)
    assert job["status"] == "COMPLETE", job
    assert replicate.submissions == 1, "the lost answer was paid for twice"
    assert replicate.submit_attempts == 1
    assert replicate.listings >= 1
    logs = await logs_of(stack, created["job_id"], auth)
    events = [e["event"] for e in logs]
    assert "submit_unanswered" in events and "submit_resolved" in events
    resolved = next(e for e in logs if e["event"] == "submit_resolved")
    assert resolved["provider_run_id"] == next(iter(replicate.jobs))
    assert await ledger_states(stack, created["job_id"]) == [SubmissionState.FINISHED]
    assert await stack.credits(user_id) == 50 - created["credits_required"]


@pytest.mark.parametrize(
    ("extra_overrides", "outcome"),
    [
        ({"provider_request_timeout_s": 2}, "COMPLETE"),
        ({"provider_request_timeout_s": 2, "ambiguous_submit_fallback": False}, "FAILED"),
    ],
    ids=["fallback", "no-fallback"],
)
async def test_unresolvable_fal_answer_is_ambiguous_and_never_resent(
    stack: Stack,
    fal: FalFake,
    replicate: ReplicateFake,
    extra_overrides: Any,
    outcome: str,
    worker: Worker,
) -> None:
    # Without webhooks fal offers no way to find a request whose id we never saw.
    fal.script(submit=[Drop()])
    ambiguous_before = _ambiguous_count(worker, "fal")
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=60)
    assert job["status"] == outcome, job
    assert fal.submit_attempts == 1 and fal.submissions == 1, "re-sent to the same provider"
    logs = await logs_of(stack, created["job_id"], auth)
    ambiguous = next(e for e in logs if e["event"] == "submit_ambiguous")
    assert ambiguous["provider"] == "fal" and ambiguous["error_code"] == "ambiguous_submit"
    states = await ledger_states(stack, created["job_id"])
    assert states[0] is SubmissionState.AMBIGUOUS
    assert _ambiguous_count(worker, "fal") == ambiguous_before + 1
    if outcome == "COMPLETE":
        assert replicate.submissions == 1 and states[1:] == [SubmissionState.FINISHED]
        assert await stack.credits(user_id) == 50 - created["credits_required"]
    else:
        assert replicate.submit_attempts == 0
        assert job["error_code"] == "ambiguous_submit" and job["credits_refunded"] is True
        assert await stack.credits(user_id) == 50


# -- workers die while the submit is out ---------------------------------------------


@pytest.mark.parametrize("extra_overrides", [{**REPLICATE_ONLY, "provider_request_timeout_s": 10}])
async def test_sigkill_while_the_submit_is_in_flight_pays_once(
    stack: Stack, replicate: ReplicateFake, workers: Workers, extra_overrides: Any
) -> None:
    # Replicate creates the prediction, then takes 6 s to answer: the worker dies meanwhile.
    replicate.script(submit=[Late(seconds=6)])
    user_id, auth = await stack.user(credits=50)
    first = await workers.spawn_ready()
    created = await stack.create_track(auth, duration_s=10)
    await eventually(lambda: replicate.submissions == 1, what="the prediction to be created")
    workers.kill(first)
    workers.spawn()
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=90)
    assert job["status"] == "COMPLETE", job
    await assert_paid_once(
        stack, replicate, created, user_id, "the retry paid for a second prediction"
    )


@pytest.mark.parametrize(
    "extra_overrides",
    [{**REPLICATE_ONLY, "provider_request_timeout_s": 10, "heartbeat_timeout_s": 2}],
)
async def test_more_worker_deaths_than_retries_do_not_fail_the_track(
    stack: Stack, replicate: ReplicateFake, workers: Workers, extra_overrides: Any, tmp_path: Path
) -> None:
    """Retries are for the provider's errors; a worker dying is not the track's fault."""
    deaths = stack.settings.submit_max_attempts + 1
    # The submit's answer is out when the first worker dies; every later worker dies while
    # it looks the prediction up in the listing, which hangs.
    replicate.script(submit=[Late(seconds=8)], list=[Stall(seconds=8, times=deaths - 1)])
    user_id, auth = await stack.user(credits=50)
    worker = await workers.spawn_ready()
    created = await stack.create_track(auth, duration_s=10)
    await eventually(lambda: replicate.submissions == 1, what="the prediction to be created")
    for death in range(deaths):
        workers.kill(worker)
        worker = await workers.spawn_ready()
        if death < deaths - 1:
            await eventually(
                lambda n=death + 1: replicate.listings >= n,  # type: ignore[misc]
                timeout_s=30,
                what=f"lookup {death + 1} of the lost answer",
            )
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=90)
    assert job["status"] == "COMPLETE", job
    await assert_paid_once(
        stack, replicate, created, user_id, "a retry paid for a second prediction"
    )
    # The step that ran again replays as it ran.
    await export_and_replay(stack, created["workflow_id"], "worker_deaths", tmp_path)


# -- cancel and terminate reach the provider's job -------------------------------------


@pytest.mark.parametrize("provider", ["fal", "replicate"])
@pytest.mark.parametrize("extra_overrides", [{"reconcile_interval_s": 1}])
async def test_cancel_while_the_submit_is_in_flight_cancels_the_job(
    stack: Stack,
    fal: FalFake,
    replicate: ReplicateFake,
    reconciler: None,
    provider: str,
    extra_overrides: Any,
    worker: Worker,
) -> None:
    fake: FakeServer = fal if provider == "fal" else replicate
    if provider == "replicate":
        fal.script(submit=[Fail(403)])
    fake.script(submit=[Late(seconds=3)], jobs=[Job(running_s=60)])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    await eventually(lambda: fake.submissions == 1, what="the provider's job to be created")
    response = await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    assert response.status_code in (200, 202), response.text
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "CANCELLED", job
    assert await stack.credits(user_id) == 50
    # As soon as its id is known the job is stopped at the provider.
    (job_id,) = fake.jobs
    await eventually(lambda: fake.jobs[job_id].cancelled, timeout_s=20, what="the cancel")
    assert fake.submissions == 1
    await eventually(
        lambda: _all_in(stack, created["job_id"], SubmissionState.CANCELLED),
        what="the ledger to show the job cancelled",
    )


async def _all_in(stack: Stack, job_id: str, state: SubmissionState) -> bool:
    states = [s for s in await ledger_states(stack, job_id) if s is not SubmissionState.REJECTED]
    return bool(states) and all(s is state for s in states)


@pytest.mark.parametrize("extra_overrides", [{"reconcile_interval_s": 1}])
async def test_terminate_while_rendering_refunds_and_cancels_the_job(
    stack: Stack,
    fal: FalFake,
    reconciler: None,
    extra_overrides: Any,
    worker: Worker,
    tmp_path: Path,
) -> None:
    fal.script(jobs=[Job(running_s=120)])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    await eventually(lambda: fal.polls > 0, what="fal polling")
    await temporal(stack, "workflow", "terminate", "--workflow-id", created["workflow_id"])
    terminated_at = time.monotonic()
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=15)
    assert job["status"] == "TERMINATED" and job["credits_refunded"] is True
    (fal_job,) = fal.jobs.values()
    await eventually(lambda: fal_job.cancelled, timeout_s=15, what="the fal job to be cancelled")
    took = time.monotonic() - terminated_at
    assert await stack.credits(user_id) == 50
    assert await ledger_states(stack, created["job_id"]) == [SubmissionState.CANCELLED]
    print(f"terminate -> provider job cancelled in {took:.1f} s")
    # A run that ends without its own last word (no cleanup ran in the workflow) replays.
    await export_and_replay(stack, created["workflow_id"], "terminated_after_submit", tmp_path)


# -- failing over leaves nothing running -------------------------------------------------


async def test_fallback_after_5xx_polls_cancels_the_first_job(
    stack: Stack, fal: FalFake, replicate: ReplicateFake, worker: Worker
) -> None:
    fal.script(poll=[Fail(503, times=50)], jobs=[Job(running_s=60)])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=60)
    assert job["status"] == "COMPLETE", job
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["provider"] == "replicate"
    (fal_job,) = fal.jobs.values()
    assert fal_job.cancelled, "the fal job runs on after we fell back"
    assert fal.submissions == 1 and replicate.submissions == 1
    assert await ledger_states(stack, created["job_id"]) == [
        SubmissionState.CANCELLED,
        SubmissionState.FINISHED,
    ]
    logs = await logs_of(stack, created["job_id"], auth)
    cancelled = next(e for e in logs if e["event"] == "provider_cancelled")
    assert cancelled["provider"] == "fal" and cancelled["provider_run_id"] == fal_job.id
    assert await stack.credits(user_id) == 50 - created["credits_required"]


# -- a kill storm ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra_overrides",
    [{**REPLICATE_ONLY, "provider_request_timeout_s": 5, "heartbeat_timeout_s": 3}],
)
async def test_kill_storm_pays_and_charges_once_per_track(
    stack: Stack, replicate: ReplicateFake, workers: Workers, extra_overrides: Any
) -> None:
    """Several tracks while the only worker is SIGKILLed every few seconds for a minute."""
    # Answers that take a while, so kills land while submits are out.
    replicate.script(submit=[Late(seconds=1.5, times=8)], jobs=[Job(running_s=10)] * 8)
    user_id, auth = await stack.user(credits=200, plan=Plan.PRO)  # pro: 20 creates a minute
    worker = await workers.spawn_ready()
    storm_ends = time.monotonic() + 60
    tracks: list[dict[str, Any]] = []

    async def create_through_the_storm() -> None:
        # Spread over the storm, so there is always work in flight to cut short.
        for _ in range(6):
            tracks.append(await stack.create_track(auth, duration_s=10))
            await asyncio.sleep(7)

    creating = asyncio.create_task(create_through_the_storm())
    # The first kill lands for sure while a submit's answer is out (the prediction
    # exists, the worker has not heard back); the rest land wherever they fall.
    await eventually(lambda: replicate.submissions >= 1, what="the first prediction")
    workers.kill(worker)
    kills = 1
    worker = await workers.spawn_ready()
    rng = random.Random(7)
    while time.monotonic() < storm_ends:
        # Each worker gets a few seconds of real work before it dies.
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        workers.kill(worker)
        kills += 1
        worker = await workers.spawn_ready()
    await creating
    done_in_storm = 0
    for created in tracks:
        job = (await stack.http.get(f"/api/jobs/{created['job_id']}", headers=auth)).json()
        done_in_storm += job["status"] == "COMPLETE"
    retried = 0
    complete: list[dict[str, Any]] = []
    for created in tracks:
        job = await stack.wait_for_job(created["job_id"], auth, timeout_s=120)
        rows = await SubmissionLedger(stack.store.sessions).for_job(uuid.UUID(job["id"]))
        retried += await _interrupted_activities(stack, created["workflow_id"])
        if job["status"] == "COMPLETE":
            complete.append(created)
            assert [r.state for r in rows if r.state.paid] == [SubmissionState.FINISHED], rows
            continue
        # A kill between the ledger's commit and the request leaving is, to the next
        # worker, a submit that may have been sent: by design it is never sent again, and
        # with one provider the track fails, refunded. Anything else is a bug.
        logs = await logs_of(stack, created["job_id"], auth)
        explained = (
            job["status"] == "FAILED"
            and job["error_code"] == "ambiguous_submit"
            and job["credits_refunded"]
            and [(r.state, r.run_id) for r in rows] == [(SubmissionState.AMBIGUOUS, None)]
        )
        assert explained, f"{job}\nlogs: {logs}\nledger: {[r.model_dump() for r in rows]}"
    assert len(complete) > len(tracks) // 2, "the storm failed most tracks"
    # One prediction per finished track; the ambiguous ones never reached the provider.
    assert replicate.submissions == len(complete), "a track paid for more than one prediction"
    charged = sum(t["credits_required"] for t in complete)
    assert await stack.credits(user_id) == 200 - charged
    print(
        f"kill storm: {kills} kills, {len(tracks)} tracks ({done_in_storm} done during it, "
        f"{len(complete)} COMPLETE in the end), "
        f"{retried} activity attempts cut short, {replicate.submissions} predictions"
    )
    # The storm must have hit work in progress, or it proved nothing.
    assert retried > 0, "no activity was ever interrupted"


async def _interrupted_activities(stack: Stack, workflow_id: str) -> int:
    """Activity attempts that a later attempt replaced, from the workflow's history."""
    history = await stack.temporal.client.get_workflow_handle(workflow_id).fetch_history()
    return sum(
        max(0, event.activity_task_started_event_attributes.attempt - 1)
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
    )


# -- the cap counts paid submissions ------------------------------------------------------


@pytest.mark.parametrize("extra_overrides", [{"max_submissions_per_track": 1}])
async def test_a_refused_submit_does_not_count_against_the_cap(
    stack: Stack, fal: FalFake, replicate: ReplicateFake, extra_overrides: Any, worker: Worker
) -> None:
    fal.script(submit=[Fail(403)])
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    assert replicate.submissions == 1
    assert await ledger_states(stack, created["job_id"]) == [
        SubmissionState.REJECTED,
        SubmissionState.FINISHED,
    ]
    logs = await logs_of(stack, created["job_id"], auth)
    submitted = next(e for e in logs if e["event"] == "submitted")
    (row,) = [
        r
        for r in await SubmissionLedger(stack.store.sessions).for_job(uuid.UUID(created["job_id"]))
        if r.state is SubmissionState.FINISHED
    ]
    # The job log names each paid submission's provider and run id; the token, which binds
    # provider deliveries to the submission, is in nothing the user can read.
    assert submitted["provider"] == "replicate" and submitted["provider_run_id"] == row.run_id
    assert not [entry for entry in logs if row.token in str(entry)], logs


@pytest.mark.parametrize("extra_overrides", [{"max_submissions_per_track": 1}])
async def test_a_paid_submission_that_failed_uses_up_the_cap(
    stack: Stack, fal: FalFake, replicate: ReplicateFake, extra_overrides: Any, worker: Worker
) -> None:
    fal.script(jobs=[Job(fail="model crashed")])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "FAILED" and job["error_code"] == "submission_cap", job
    assert fal.submissions == 1 and replicate.submit_attempts == 0
    assert await stack.credits(user_id) == 50


# -- a worker dies between storing the audio and recording it ---------------------------

HOLD_AT_COVER = 4242  # the advisory lock the trigger below waits on


@pytest.mark.parametrize("extra_overrides", [{**REPLICATE_ONLY, "heartbeat_timeout_s": 2}])
async def test_sigkill_after_the_audio_is_stored_and_before_it_is_recorded(
    stack: Stack, replicate: ReplicateFake, workers: Workers, extra_overrides: Any
) -> None:
    """`collect_audio` stores the checked audio at its final key, then records it (the job
    moves to the cover step in the same transaction). Postgres holds that transaction
    until the worker is SIGKILLed: the file is in place, nothing says so, and the next
    worker collects again. One prediction, one charge, one recorded store, whole audio."""
    url = stack.settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    holder = await asyncpg.connect(url)
    try:
        await holder.execute(
            f"""
            CREATE FUNCTION hold_at_cover() RETURNS trigger AS $$
            BEGIN
              IF NEW.step = 'cover' AND OLD.step <> 'cover' THEN
                PERFORM pg_advisory_xact_lock({HOLD_AT_COVER});
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER hold_at_cover BEFORE UPDATE ON jobs
              FOR EACH ROW EXECUTE FUNCTION hold_at_cover();
            SELECT pg_advisory_lock({HOLD_AT_COVER});
            """
        )
        user_id, auth = await stack.user(credits=50)
        worker = await workers.spawn_ready()
        created = await stack.create_track(auth, duration_s=10)
        key = f"tracks/{user_id}/{created['track_id']}.wav"

        async def held() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            return bool(waiting)

        await eventually(held, timeout_s=60, what="the store's record to wait on the lock")
        assert await stack.storage.exists(key), "the audio was not stored before its record"
        events = [e["event"] for e in await logs_of(stack, created["job_id"], auth)]
        assert "audio_checked" in events and "audio_stored" not in events
        workers.kill(worker)
        # Unlocked first: the dead worker's transaction, still on the jobs row, must end
        # (its client is gone, so it rolls back) before the trigger can be dropped.
        await holder.execute(f"SELECT pg_advisory_unlock({HOLD_AT_COVER})")
        await holder.execute("DROP TRIGGER hold_at_cover ON jobs; DROP FUNCTION hold_at_cover()")
    finally:
        await holder.close()

    workers.spawn()
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=90)
    assert job["status"] == "COMPLETE", job
    await assert_paid_once(
        stack, replicate, created, user_id, "collecting again paid for a second prediction"
    )
    events = [e["event"] for e in await logs_of(stack, created["job_id"], auth)]
    assert events.count("audio_stored") == 1, events  # the killed attempt recorded nothing
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert abs(track["audio"]["duration_s"] - 10) < 0.1
