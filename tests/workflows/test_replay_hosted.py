"""Histories of hosted-provider runs (timers between polls, cleanup of open jobs,
fallback) are exported with the real CLI and replay on the current code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, eventually
from tests.fakes import Fail, Job
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import extra_overrides, fal, replicate, stack_overrides
from tests.fakes.replicate_server import ReplicateFake
from tests.workflows.histories import export_and_replay

__all__ = ["extra_overrides", "fal", "replicate", "stack_overrides"]


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
    await export_and_replay(stack, created["workflow_id"], "hosted_fallback", tmp_path)


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
    await export_and_replay(stack, created["workflow_id"], "hosted_cancelled", tmp_path)
