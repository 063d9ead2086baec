"""Histories of hosted-provider runs (timers between polls, cleanup of open jobs,
fallback) are exported with the real CLI and replay on the current code."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from soundfoundry.replay import replay_files
from tests.conftest import Stack, eventually
from tests.fakes import Fail, Job
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import extra_overrides, fal, replicate, stack_overrides
from tests.fakes.replicate_server import ReplicateFake
from tests.services import temporal_cli_path

__all__ = ["extra_overrides", "fal", "replicate", "stack_overrides"]


async def export_and_replay(stack: Stack, workflow_id: str, name: str, tmp_path: Path) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [
            str(temporal_cli_path()), "workflow", "show",
            "--workflow-id", workflow_id,
            "--address", stack.settings.temporal_address,
            "--output", "json",
        ],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    path = tmp_path / f"{name}.json"
    path.write_text(done.stdout)
    if capture := os.environ.get("CAPTURE_HISTORIES_TO"):
        (Path(capture) / f"{name}.json").write_text(done.stdout)
    [outcome] = await replay_files([path])
    assert outcome.error is None, outcome.error


@pytest.mark.parametrize("extra_overrides", [{"poll_interval_s": 0.5}])
async def test_a_fallback_after_failing_polls_replays(
    stack: Stack, fal: FalFake, replicate: ReplicateFake, tmp_path: Path, extra_overrides: Any
) -> None:
    fal.script(poll=[Fail(503, times=20)], jobs=[Job(running_s=30)])
    replicate.script(jobs=[Job(running_polls=3)])
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=60)
    assert job["status"] == "COMPLETE", job
    await export_and_replay(stack, created["workflow_id"], "track_v3_hosted_fallback", tmp_path)


async def test_a_cancel_while_waiting_on_the_provider_replays(
    stack: Stack, fal: FalFake, tmp_path: Path
) -> None:
    fal.script(jobs=[Job(running_s=60)])
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=10)
    await eventually(lambda: fal.polls >= 2, what="fal polling")
    await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "CANCELLED" and fal.cancels == 1
    await export_and_replay(stack, created["workflow_id"], "track_v3_hosted_cancelled", tmp_path)
