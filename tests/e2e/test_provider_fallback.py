"""fal and Replicate through the real client libraries, a real worker and Temporal.

The fakes in tests/fakes speak the providers' HTTP protocols on loopback; everything
else is the product as deployed.
"""

from __future__ import annotations

import signal
import subprocess
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import Stack, eventually
from tests.fakes import Audio, Fail, Job
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import extra_overrides, fal, replicate, stack_overrides
from tests.fakes.replicate_server import ReplicateFake

__all__ = ["extra_overrides", "fal", "replicate", "stack_overrides"]


async def logs_of(stack: Stack, job_id: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    response = await stack.http.get(f"/api/jobs/{job_id}/logs", headers=auth)
    logs: list[dict[str, Any]] = response.json()
    return logs


async def test_fal_serves_the_track(stack: Stack, fal: FalFake, replicate: ReplicateFake) -> None:
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["provider"] == "fal"
    assert fal.submissions == 1 and replicate.submissions == 0
    assert fal.inputs[0]["seconds_total"] == 10


async def test_fal_403_falls_back_to_replicate_within_a_second(
    stack: Stack, fal: FalFake, replicate: ReplicateFake
) -> None:
    fal.script(submit=[Fail(403, detail="key lacks scope")])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["provider"] == "replicate"
    assert fal.submit_attempts == 1, "403 must not be retried"
    assert replicate.submissions == 1

    logs = await logs_of(stack, created["job_id"], auth)
    fal_failed = next(e for e in logs if e["event"] == "submitted.failed")
    assert fal_failed["provider"] == "fal" and fal_failed["error_code"] == "http_403"
    assert "Provider fal failed" in fal_failed["message"]
    fallback = next(e for e in logs if e["event"] == "fallback")
    assert fallback["message"].startswith("Falling back to replicate")
    replicate_submitted = next(
        e for e in logs if e["event"] == "submitted" and e["provider"] == "replicate"
    )
    gap = datetime.fromisoformat(replicate_submitted["ts"]) - datetime.fromisoformat(
        fal_failed["ts"]
    )
    assert gap.total_seconds() < 1.0, gap
    completed = next(e for e in logs if e["event"] == "complete")
    assert completed["message"] == "Fallback successful, using replicate"
    assert await stack.credits(user_id) == 50 - 2


async def test_429_is_retried_after_retry_after(stack: Stack, fal: FalFake) -> None:
    fal.script(submit=[Fail(429, retry_after=1)])
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    assert fal.submit_attempts == 2 and fal.submissions == 1
    logs = await logs_of(stack, created["job_id"], auth)
    limited = next(e for e in logs if e["error_code"] == "http_429")
    accepted = next(e for e in logs if e["event"] == "submitted")
    assert (limited["attempt"], accepted["attempt"]) == (1, 2)
    waited = datetime.fromisoformat(accepted["ts"]) - datetime.fromisoformat(limited["ts"])
    assert waited.total_seconds() >= 0.9, "Retry-After was not honoured"


async def test_both_providers_down_fails_and_refunds(
    stack: Stack, fal: FalFake, replicate: ReplicateFake
) -> None:
    fal.script(submit=[Fail(500, times=10)])
    replicate.script(submit=[Fail(503, times=10)])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "FAILED"
    # A 5xx may come after the job was created: it is never re-sent to that provider.
    assert job["error_code"] == "ambiguous_submit"
    assert job["credits_refunded"] is True
    assert await stack.credits(user_id) == 50
    assert fal.submit_attempts == 1 and replicate.submit_attempts == 1


async def test_submit_refused_before_acting_is_retried(stack: Stack, fal: FalFake) -> None:
    # 429 is a refusal: nothing was created, so the same provider may be asked again.
    fal.script(submit=[Fail(429, times=2, retry_after=0)])
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    assert fal.submit_attempts == 3 and fal.submissions == 1


@pytest.mark.parametrize("bad", [Audio.BROKEN, Audio.SHORT, Audio.SILENT])
async def test_bad_audio_falls_back(
    stack: Stack, fal: FalFake, replicate: ReplicateFake, bad: Audio
) -> None:
    fal.script(jobs=[Job(audio=bad)])
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["provider"] == "replicate"
    assert abs(track["audio"]["duration_s"] - 10) < 1
    logs = await logs_of(stack, created["job_id"], auth)
    assert any(e["error_code"] == "bad_audio" and e["provider"] == "fal" for e in logs)
    assert await stack.storage.list_keys("staging/") == []


async def test_job_failed_at_provider_falls_back(
    stack: Stack, fal: FalFake, replicate: ReplicateFake
) -> None:
    fal.script(jobs=[Job(fail="CUDA out of memory")])
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE"
    logs = await logs_of(stack, created["job_id"], auth)
    assert any(e["error_code"] == "job_failed" and "CUDA" in e["message"] for e in logs)
    assert replicate.submissions == 1


async def test_cancel_mid_generation_cancels_the_provider_job(stack: Stack, fal: FalFake) -> None:
    fal.script(jobs=[Job(running_s=60)])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    await stack.wait_for_job(created["job_id"], auth, until=lambda j: fal.polls > 0)
    await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "CANCELLED"
    assert fal.cancels >= 1 and set(fal.cancelled_ids) == set(fal.jobs)
    assert await stack.credits(user_id) == 50


@pytest.mark.parametrize("extra_overrides", [{"fal_key": None}])
async def test_a_provider_with_no_key_is_skipped_and_logged(
    stack: Stack, fal: FalFake, replicate: ReplicateFake, extra_overrides: Any
) -> None:
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE"
    logs = await logs_of(stack, created["job_id"], auth)
    assert "fal (skipped: no API key configured)" in logs[0]["message"]
    assert fal.submit_attempts == 0 and replicate.submissions == 1


async def test_a_track_no_provider_can_serve_fails_without_calling_them(
    stack: Stack, fal: FalFake, replicate: ReplicateFake
) -> None:
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=60)  # longer than either model
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "FAILED" and job["error_code"] == "no_capable_provider"
    assert "makes at most" in job["error_message"]
    assert fal.submit_attempts == 0 and replicate.submit_attempts == 0
    assert await stack.credits(user_id) == 50


@pytest.mark.parametrize(
    ("extra_overrides", "expected"),
    [
        ({}, {"fal": "ok", "replicate": "ok"}),
        ({"fal_key": "wrong-key-0123456789"}, {"fal": "fail", "replicate": "ok"}),
        ({"replicate_api_token": None}, {"fal": "ok", "replicate": "unconfigured"}),
    ],
    ids=["ok", "fal-bad-key", "replicate-unconfigured"],
)
async def test_provider_health(
    stack: Stack, extra_overrides: Any, expected: dict[str, str]
) -> None:
    response = await stack.http.get("/api/health/providers")
    assert response.status_code == 200, response.text
    health = response.json()
    assert {name: health[name] for name in expected} == expected
    for name, status in expected.items():
        if status == "fail":
            assert health[f"{name}_error"]
            assert "wrong-key" not in health[f"{name}_error"]
        else:
            assert health[f"{name}_error"] is None


@pytest.fixture
def start_worker(request: pytest.FixtureRequest) -> bool:
    return "sigkill" not in request.node.name


@pytest.mark.parametrize("provider", ["fal", "replicate"])
async def test_sigkill_after_submit_completes_with_one_submission(
    stack: Stack,
    fal: FalFake,
    replicate: ReplicateFake,
    provider: str,
    worker_command: list[str],
) -> None:
    fake = fal if provider == "fal" else replicate
    fake.script(jobs=[Job(running_s=6, running_polls=1)])
    if provider == "replicate":
        fal.script(submit=[Fail(403)])
    user_id, auth = await stack.user(credits=50)
    spawn = lambda: subprocess.Popen(  # noqa: E731
        worker_command, env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = spawn()
    second = None
    try:
        created = await stack.create_track(auth, duration_s=10)
        # Submitted, and being polled by the first worker.
        await eventually(lambda: fake.polls >= 2, what="the first worker to poll")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = spawn()
        job = await stack.wait_for_job(created["job_id"], auth, timeout_s=90)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    assert job["status"] == "COMPLETE", job
    assert fake.submissions == 1, "the retry paid for a second job"
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["provider"] == provider
    assert len(await stack.storage.list_keys("tracks/")) == 2  # master and stream
    assert await stack.credits(user_id) == 50 - 2
