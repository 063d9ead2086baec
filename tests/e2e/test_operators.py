"""What operators do with the real `temporal` CLI keeps the database true."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlmodel import col, select

from core.contracts import reconcile_schedule_id
from core.models import Job, JobEvent
from tests.conftest import Stack, eventually
from tests.fakes import Job as FakeJob
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import extra_overrides, fal, replicate, stack_overrides
from tests.services import temporal_cli_path
from worker import ensure_reconcile_schedule

__all__ = ["extra_overrides", "fal", "replicate", "stack_overrides"]

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"


async def temporal(stack: Stack, *args: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        [str(temporal_cli_path()), *args, "--address", stack.settings.temporal_address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def job_row(stack: Stack, job_id: str) -> Job:
    async with stack.store.sessions() as session:
        job = await session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


@pytest_asyncio.fixture
async def reconciler(stack: Stack) -> AsyncIterator[None]:
    """The reconcile schedule the production worker creates at start-up."""
    await ensure_reconcile_schedule(stack.temporal.client, stack.settings)
    yield
    handle = stack.temporal.client.get_schedule_handle(
        reconcile_schedule_id(stack.settings.task_queue)
    )
    await handle.delete()


@pytest.mark.parametrize("extra_overrides", [{}])
async def test_cli_cancel_cancels_provider_job_and_refunds(
    stack: Stack, fal: FalFake, extra_overrides: Any
) -> None:
    fal.script(jobs=[FakeJob(running_s=60)])
    user_id, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=10)
    await eventually(lambda: fal.polls > 0, what="fal polling")
    await temporal(stack, "workflow", "cancel", "--workflow-id", created["workflow_id"])
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "CANCELLED"
    assert set(fal.cancelled_ids) == set(fal.jobs) and fal.cancels >= 1
    assert await stack.credits(user_id) == 20


@pytest.mark.parametrize(
    "extra_overrides",
    [{"music_providers": ["synth"], "synth_pace": 1.0, "reconcile_interval_s": 2}],
)
async def test_cli_terminate_is_reconciled_within_ten_seconds(
    stack: Stack, reconciler: None, extra_overrides: Any
) -> None:
    user_id, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=30)
    await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")
    assert await stack.credits(user_id) == 15
    await temporal(
        stack, "workflow", "terminate", "--workflow-id", created["workflow_id"], "--reason", "ops"
    )
    terminated_at = time.monotonic()
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=10)
    took = time.monotonic() - terminated_at
    assert job["status"] == "TERMINATED", job
    assert job["credits_refunded"] is True and job["error_code"] == "terminated"
    assert await stack.credits(user_id) == 20
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["status"] == "TERMINATED"
    print(f"terminate -> database TERMINATED in {took:.1f} s")


@pytest.mark.parametrize("extra_overrides", [{"music_providers": ["synth"], "synth_pace": 0.5}])
async def test_cli_reset_of_a_cancelled_job_completes_it_consistently(
    stack: Stack, extra_overrides: Any
) -> None:
    """Cancelled (and refunded), then reset to the start: the new run delivers the track
    and the database follows it, charging the credits once."""
    user_id, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=6)
    await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")
    await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "CANCELLED"
    assert await stack.credits(user_id) == 20
    first_run = (await job_row(stack, created["job_id"])).run_id

    await temporal(
        stack, "workflow", "reset", "--workflow-id", created["workflow_id"],
        "--type", "FirstWorkflowTask", "--reason", "operator retry",
    )  # fmt: skip
    job = await stack.wait_for_job(
        created["job_id"], auth, until=lambda j: j["status"] == "COMPLETE", timeout_s=60
    )
    row = await job_row(stack, created["job_id"])
    described = await stack.temporal.client.get_workflow_handle(created["workflow_id"]).describe()
    assert row.run_id == described.run_id != first_run
    assert job["credits_refunded"] is False
    assert await stack.credits(user_id) == 20 - created["credits_required"]  # once, not twice
    assert await stack.storage.list_keys("tracks/") == [
        f"tracks/{user_id}/{created['track_id']}.master.flac",
        f"tracks/{user_id}/{created['track_id']}.stream.mp3",
    ]


@pytest.mark.parametrize("extra_overrides", [{"music_providers": ["synth"]}])
@pytest.mark.parametrize("reset_to", ["FirstWorkflowTask", "LastWorkflowTask"])
async def test_cli_reset_of_a_complete_job_keeps_one_charge_and_one_file(
    stack: Stack, extra_overrides: Any, reset_to: str
) -> None:
    user_id, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=6)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "COMPLETE"
    handle = stack.temporal.client.get_workflow_handle(created["workflow_id"])
    first_run = (await handle.describe()).run_id
    await temporal(
        stack, "workflow", "reset", "--workflow-id", created["workflow_id"],
        "--type", reset_to, "--reason", "operator retry",
    )  # fmt: skip

    async def rerun_finished() -> bool:
        latest = await handle.describe()
        return (
            latest.run_id != first_run
            and latest.status is not None
            and (latest.status.name == "COMPLETED")
        )

    await eventually(rerun_finished, timeout_s=60, what="the reset run to complete")
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE" and job["credits_refunded"] is False
    assert await stack.credits(user_id) == 20 - created["credits_required"]
    # The master and its stream, once: the provider's file was replaced again.
    assert len(await stack.storage.list_keys("tracks/")) == 2


@pytest.mark.parametrize("extra_overrides", [{"fal_key": None}])
async def test_search_attributes_find_jobs_from_the_cli(stack: Stack, extra_overrides: Any) -> None:
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=6)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "COMPLETE"
    query = f"TrackId='{created['track_id']}' AND JobStatus='COMPLETE' AND Provider='replicate'"

    async def listed() -> bool:
        out = await temporal(stack, "workflow", "list", "--query", query, "--output", "json")
        return created["workflow_id"] in out

    await eventually(listed, timeout_s=20, what="visibility to show the workflow")


async def test_replay_cli_accepts_saved_histories_and_catches_a_broken_one(
    tmp_path: Path,
) -> None:
    ok = await asyncio.to_thread(
        subprocess.run,
        [str(SOUNDFOUNDRY), "replay", *map(str, sorted(HISTORIES.glob("*.json")))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    histories = len(list(HISTORIES.glob("*.json")))
    assert f"{histories} replayed cleanly, 0 failed" in ok.stderr

    # The same history as if the code had scheduled a different first activity.
    history = json.loads((HISTORIES / "track_complete.json").read_text())
    for event in history["events"]:
        attributes = event.get("activityTaskScheduledEventAttributes")
        if attributes and attributes["activityType"]["name"] == "submit_generation":
            attributes["activityType"]["name"] = "submit_generation_v0"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(history))
    bad = await asyncio.to_thread(
        subprocess.run,
        [str(SOUNDFOUNDRY), "replay", str(broken)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "FAIL" in bad.stderr and "1 failed" in bad.stderr


@pytest.mark.parametrize("extra_overrides", [{"music_providers": ["synth"]}])
async def test_replay_cli_replays_live_histories_by_query(
    stack: Stack, extra_overrides: Any
) -> None:
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=6)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "COMPLETE"
    env = {**stack.env, "TEMPORAL_ADDRESS": stack.settings.temporal_address}
    done = await asyncio.to_thread(
        subprocess.run,
        [str(SOUNDFOUNDRY), "replay", "--query", f"WorkflowId='{created['workflow_id']}'"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 replayed cleanly, 0 failed" in done.stderr

    async with stack.store.sessions() as session:
        events = await session.exec(
            select(JobEvent).where(col(JobEvent.job_id) == uuid.UUID(created["job_id"]))
        )
        assert any(e.event == "complete" for e in events)
