"""A worker SIGKILLed mid-generation: another worker finishes the same job, once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from typing import Any

import pytest
from sqlmodel import col, select

from core.models import JobEvent
from tests.conftest import Stack, eventually

SLOW_SYNTH = {"synth_pace": 0.5, "heartbeat_timeout_s": 2}


@pytest.fixture
def start_worker() -> bool:
    return False  # this test runs its workers as real processes


def spawn_worker(stack: Stack, command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def events_of(stack: Stack, job_id: str) -> list[JobEvent]:
    async with stack.store.sessions() as session:
        rows = await session.exec(select(JobEvent).where(col(JobEvent.job_id) == uuid.UUID(job_id)))
        return list(rows)


@pytest.mark.parametrize("stack_overrides", [SLOW_SYNTH])
async def test_sigkilled_worker_job_is_finished_by_another_worker_exactly_once(
    stack: Stack, stack_overrides: Any, worker_command: list[str]
) -> None:
    user_id, auth = await stack.user(credits=10)
    first = spawn_worker(stack, worker_command)
    second: subprocess.Popen[bytes] | None = None
    try:
        created = await stack.create_track(auth, duration_s=10)  # ~5 s of rendering
        await stack.wait_for_job(
            created["job_id"], auth, until=lambda j: j["step"] == "generating", timeout_s=30
        )

        # Let the render get well under way, then kill the worker without warning.
        async def was_submitted() -> bool:
            return any(e.event == "submitted" for e in await events_of(stack, created["job_id"]))

        await eventually(was_submitted, what="the submission")
        await asyncio.sleep(1.5)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        job = (await stack.http.get(f"/api/jobs/{created['job_id']}", headers=auth)).json()
        assert job["status"] == "RENDERING"

        second = spawn_worker(stack, worker_command)
        job = await stack.wait_for_job(created["job_id"], auth, timeout_s=90)
        assert job["status"] == "COMPLETE", job
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)

    events = await events_of(stack, created["job_id"])
    submitted = [e for e in events if e.event == "submitted"]
    assert len(submitted) == 1, "a second paid submission was made"
    ready = [e for e in events if e.event == "audio_ready"]
    assert [e.attempt for e in ready] == [2], "the retry should resume the same job"
    assert ready[0].provider_run_id == submitted[0].provider_run_id

    track_files = await stack.storage.list_keys("tracks/")
    assert track_files == [
        f"tracks/{user_id}/{created['track_id']}.master.flac",
        f"tracks/{user_id}/{created['track_id']}.stream.mp3",
    ]
    assert await stack.storage.list_keys("staging/") == []
    assert await stack.credits(user_id) == 10 - 2  # charged once
