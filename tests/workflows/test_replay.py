"""Saved histories of TrackWorkflow replay on the current code; a change that breaks
determinism fails here.

`tests/histories/` holds one run of each scenario a track can go through, recorded by
versioned workers of one build (RECORDED_ON). The rule for a change to the workflow
(workflows/track.py, CONTRIBUTING.md): either every saved history still replays, or the
change ships as a new worker deployment build id, with its histories recorded again.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.contracts import TRACK_WORKFLOW, TrackInput, TrackResult
from core.deployment import deployment_version
from soundfoundry.replay import replay_files
from tests.conftest import Stack
from tests.workflows.histories import (
    RECORDERS,
    export_and_replay,
    history_path,
    recorded_versions,
    saved_histories,
)
from workflows.policies import BOOKKEEPING_RETRY
from workflows.track import JobActivities, TrackWorkflow

# The worker deployment version whose workers recorded every saved history. Recording
# them again (`.venv/bin/python -m tests.workflows.histories`) records the build id of
# the code at hand: put it here, so a review sees that the workflow moved to a new build.
RECORDED_ON = ("soundfoundry", "1.0.0-1864318941db")
REPLAY_BROKEN = """{name} was recorded on build {build} and no longer replays on this code:
{error}
This change to TrackWorkflow is not replay-compatible: runs in flight on build {build}
could not continue on it. Either make the change compatible, or ship it as a new build id
of the worker deployment (runs of the old build finish on its workers): record the saved
histories again (.venv/bin/python -m tests.workflows.histories), set RECORDED_ON in
tests/workflows/test_replay.py to the new build id, and roll it out as a new version
(CONTRIBUTING.md)."""


def test_every_scenario_has_a_saved_history() -> None:
    missing = [s for s in RECORDERS if not history_path(s).exists()]
    assert not missing, (
        f"no saved history for {missing}: record them (tests/workflows/histories.py)"
    )
    strays = {p.name for p in saved_histories()} - {history_path(s).name for s in RECORDERS}
    assert not strays, f"{strays} record no known scenario"


@pytest.mark.parametrize("path", saved_histories(), ids=lambda p: p.stem)
def test_a_saved_history_names_the_build_it_was_recorded_on(path: Path) -> None:
    """Every workflow task of the run was completed by a worker of RECORDED_ON."""
    versions = recorded_versions(path)
    print(f"{path.name}: recorded on {sorted(versions)}")
    assert versions == {RECORDED_ON}, (
        f"{path.name} was recorded on {sorted(versions)}, not on {RECORDED_ON}: the saved"
        " histories must all come from one recording by versioned workers"
        " (.venv/bin/python -m tests.workflows.histories)"
    )


@pytest.mark.parametrize("path", saved_histories(), ids=lambda p: p.stem)
async def test_saved_history_replays_on_current_code(path: Path) -> None:
    [outcome] = await replay_files([path])
    assert outcome.error is None, REPLAY_BROKEN.format(
        name=path.name, build=":".join(RECORDED_ON), error=outcome.error
    )


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
    """Export with the real `temporal` CLI, as an operator would, and replay that file;
    the run names the version of the worker that made it."""
    _, auth = await stack.user(credits=10)
    created = await stack.create_track(auth)
    if scenario == "cancelled":
        await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")
        await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == scenario.upper()
    await export_and_replay(stack, job["workflow_id"], scenario, tmp_path)
    version = deployment_version(stack.settings)
    assert recorded_versions(tmp_path / f"{scenario}.json") == {
        (version.deployment_name, version.build_id)
    }


@workflow.defn(name=TRACK_WORKFLOW, sandboxed=False)
class ReorderedTrackWorkflow:
    """A careless edit: the cover is now made before generation."""

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
    path = history_path("complete")
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
