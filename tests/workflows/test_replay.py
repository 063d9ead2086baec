"""Workflow histories replay against the current code; a non-deterministic change fails.

`tests/histories/` holds histories exported with `temporal workflow show --output json`
from earlier versions of TrackWorkflow. Every one must keep replaying, or the change that
broke it must be guarded with `workflow.patched`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.contracts import TRACK_WORKFLOW, TrackInput, TrackResult
from soundfoundry.replay import replay_files
from tests.conftest import Stack
from tests.services import temporal_cli_path
from workflows.track import BOOKKEEPING_RETRY, JobActivities, TrackWorkflow

HISTORIES = Path(__file__).resolve().parents[1] / "histories"


def saved_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def test_there_are_saved_histories() -> None:
    assert saved_histories(), "tests/histories/ must hold at least one exported history"


@pytest.mark.parametrize("path", saved_histories(), ids=lambda p: p.stem)
async def test_saved_history_replays_on_current_code(path: Path) -> None:
    [outcome] = await replay_files([path])
    assert outcome.error is None, outcome.error


@pytest.mark.parametrize(
    ("stack_overrides", "scenario"),
    [
        ({}, "complete"),
        ({"music_providers": ["fal"]}, "failed"),
        ({"synth_pace": 1.0}, "cancelled"),
    ],
)
async def test_exported_history_of_a_fresh_run_replays(
    stack: Stack, stack_overrides: dict[str, object], scenario: str, tmp_path: Path
) -> None:
    """Export with the real `temporal` CLI, as an operator would, and replay that file."""
    _, auth = await stack.user(credits=10)
    created = await stack.create_track(auth)
    if scenario == "cancelled":
        await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")
        await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == scenario.upper()
    done = await asyncio.to_thread(
        subprocess.run,
        [
            str(temporal_cli_path()), "workflow", "show",
            "--workflow-id", job["workflow_id"],
            "--address", stack.settings.temporal_address,
            "--output", "json",
        ],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    exported = done.stdout
    path = tmp_path / f"{job['workflow_id']}.json"
    path.write_text(exported)
    if capture := os.environ.get("CAPTURE_HISTORIES_TO"):
        # Name files after the workflow version they record, e.g. CAPTURE_VERSION=v3.
        version = os.environ.get("CAPTURE_VERSION", "vN")
        (Path(capture) / f"track_{version}_{scenario}.json").write_text(exported)
    [outcome] = await replay_files([path])
    assert outcome.error is None, outcome.error


@workflow.defn(name=TRACK_WORKFLOW, sandboxed=False)
class ReorderedTrackWorkflow:
    """A careless edit: the cover is now made before generation, unguarded."""

    @workflow.run
    async def run(self, track: TrackInput) -> TrackResult:
        await workflow.execute_activity(
            "store_cover",
            {"track": track.model_dump(mode="json")},
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=BOOKKEEPING_RETRY,
        )
        await workflow.execute_activity_method(
            JobActivities.plan_track,
            track,
            start_to_close_timeout=timedelta(seconds=30),
        )
        raise AssertionError("unreachable in replay")


async def test_a_non_deterministic_change_is_caught_by_replay() -> None:
    path = saved_histories()[0]
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    replayer = Replayer(workflows=[ReorderedTrackWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()
    # And the real workflow replays the same file cleanly.
    ok = await Replayer(
        workflows=[TrackWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert ok.replay_failure is None
