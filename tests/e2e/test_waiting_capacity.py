"""Waiting on a provider holds no worker slot, and a provider's in-flight cap queues
tracks visibly instead of overloading it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from core.metrics import WORKER_REGISTRY
from core.models import Plan
from tests.conftest import Stack, eventually
from tests.fakes import Job
from tests.fakes.fixtures import extra_overrides, fal, replicate, stack_overrides
from tests.fakes.replicate_server import ReplicateFake

__all__ = ["extra_overrides", "fal", "replicate", "stack_overrides"]

REPLICATE = {"music_providers": ["replicate"], "poll_interval_s": 0.5}


async def statuses(stack: Stack, created: list[dict[str, Any]], auth: dict[str, str]) -> list[str]:
    return [
        (await stack.http.get(f"/api/jobs/{c['job_id']}", headers=auth)).json()["status"]
        for c in created
    ]


@pytest.mark.parametrize("extra_overrides", [{**REPLICATE, "worker_max_concurrent_activities": 2}])
async def test_tracks_waiting_on_the_provider_do_not_hold_activity_slots(
    stack: Stack, replicate: ReplicateFake, extra_overrides: Any
) -> None:
    replicate.script(jobs=[Job(running_polls=0, running_s=6)] * 5)
    _, auth = await stack.user(credits=100, plan=Plan.PRO)
    created = [await stack.create_track(auth, duration_s=10) for _ in range(5)]
    # With two slots and a slot held per waiting track, only two could be submitted
    # until the first finished rendering.
    await eventually(lambda: replicate.submissions == 5, timeout_s=20, what="five submits")
    assert "COMPLETE" not in await statuses(stack, created, auth)
    for c in created:
        job = await stack.wait_for_job(c["job_id"], auth, timeout_s=60)
        assert job["status"] == "COMPLETE", job


def _capacity_waits() -> float:
    value = WORKER_REGISTRY.get_sample_value(
        "provider_capacity_wait_seconds_count", {"provider": "replicate"}
    )
    return value or 0.0


@pytest.mark.parametrize("extra_overrides", [{**REPLICATE, "replicate_max_in_flight": 2}])
async def test_an_in_flight_cap_holds_the_third_track_in_a_visible_step(
    stack: Stack, replicate: ReplicateFake, extra_overrides: Any
) -> None:
    replicate.script(jobs=[Job(running_polls=0, running_s=4)] * 3)
    waits_before = _capacity_waits()
    _, auth = await stack.user(credits=100, plan=Plan.PRO)
    created = [await stack.create_track(auth, duration_s=10) for _ in range(3)]
    third = created[2]

    async def third_is_queued() -> bool:
        job = (await stack.http.get(f"/api/jobs/{third['job_id']}", headers=auth)).json()
        return bool(job["step"] == "provider_queue")

    await eventually(third_is_queued, timeout_s=20, what="the third track to queue")
    assert replicate.submissions == 2
    logs = (await stack.http.get(f"/api/jobs/{third['job_id']}/logs", headers=auth)).json()
    waiting = [e for e in logs if "Waiting for replicate capacity" in e["message"]]
    assert len(waiting) == 1, "the wait is told once, not on every retry"

    for c in created:
        job = await stack.wait_for_job(c["job_id"], auth, timeout_s=60)
        assert job["status"] == "COMPLETE", job
    assert replicate.submissions == 3
    # The third prediction was only created once an earlier one had finished rendering
    # at the provider (each renders for 4 s from its creation).
    created_at = sorted(j.created_at for j in replicate.jobs.values())
    assert created_at[2] >= created_at[0] + timedelta(seconds=4)
    assert _capacity_waits() == waits_before + 1


@pytest.mark.parametrize("extra_overrides", [{**REPLICATE, "worker_tuning": "resource"}])
async def test_a_resource_tuned_worker_serves_tracks(
    stack: Stack, replicate: ReplicateFake, extra_overrides: Any
) -> None:
    replicate.script(jobs=[Job(running_polls=1)] * 2)
    _, auth = await stack.user(credits=100, plan=Plan.PRO)
    created = [await stack.create_track(auth, duration_s=10) for _ in range(2)]
    for c in created:
        job = await stack.wait_for_job(c["job_id"], auth, timeout_s=60)
        assert job["status"] == "COMPLETE", job
