"""The saved histories of TrackWorkflow (tests/histories/): where they are, which worker
deployment version recorded them, and how a contributor records them again.

Each file is `temporal workflow show --output json` of one track run, named
`track_<scenario>.json`. The tests that produce the scenarios (RECORDERS) export their
run's history and replay it; with CAPTURE_HISTORIES_TO set they also save it there.
Record them all again, after a change that is not replay-compatible (a new build id):

    .venv/bin/python -m tests.workflows.histories

Every workflow task of a saved run was completed by a versioned worker, so its history
names the build id it ran on (WorkflowTaskCompleted.deploymentVersion).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundfoundry.replay import replay_files
from tests.services import temporal_cli_path

if TYPE_CHECKING:
    from tests.conftest import Stack

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
CAPTURE_ENV = "CAPTURE_HISTORIES_TO"
TASK_COMPLETED = "EVENT_TYPE_WORKFLOW_TASK_COMPLETED"

# The scenario each test records: what a track of today's workflow can go through.
RECORDERS = {
    "complete": "tests/workflows/test_replay.py::test_exported_history_of_a_fresh_run_replays",
    "failed": "tests/workflows/test_replay.py::test_exported_history_of_a_fresh_run_replays",
    "cancelled": "tests/workflows/test_replay.py::test_exported_history_of_a_fresh_run_replays",
    "hosted_fallback": "tests/workflows/test_replay_hosted.py"
    "::test_a_fallback_after_failing_polls_replays",
    "hosted_cancelled": "tests/workflows/test_replay_hosted.py"
    "::test_a_cancel_while_waiting_on_the_provider_replays",
    "webhook_fal": "tests/e2e/test_webhook_completion.py"
    "::test_a_signed_webhook_completes_the_track_without_waiting_for_a_poll",
    "webhook_replicate": "tests/e2e/test_webhook_completion.py"
    "::test_a_signed_webhook_completes_the_track_without_waiting_for_a_poll",
    "webhook_lost": "tests/e2e/test_webhook_completion.py"
    "::test_a_lost_delivery_is_covered_by_the_safety_poll",
    "mastering_cancelled": "tests/e2e/test_renditions.py"
    "::test_a_cancel_while_mastering_leaves_the_track_complete_and_playing",
    "worker_deaths": "tests/e2e/test_pay_once.py"
    "::test_more_worker_deaths_than_retries_do_not_fail_the_track",
    "terminated_after_submit": "tests/e2e/test_pay_once.py"
    "::test_terminate_while_rendering_refunds_and_cancels_the_job",
}


def history_path(scenario: str) -> Path:
    return HISTORIES / f"track_{scenario}.json"


def saved_histories() -> list[Path]:
    return sorted(HISTORIES.glob("track_*.json"))


def capture(scenario: str, exported: str) -> None:
    """Save a run's exported history as the scenario's, when recording."""
    if folder := os.environ.get(CAPTURE_ENV):
        (Path(folder) / history_path(scenario).name).write_text(exported)


def recorded_versions(path: Path) -> set[tuple[str, str]]:
    """(deployment name, build id) of every workflow task the saved run completed; an
    unversioned worker's task counts as ("", "")."""
    events: list[dict[str, Any]] = json.loads(path.read_text())["events"]
    versions = set()
    for event in events:
        if event["eventType"] != TASK_COMPLETED:
            continue
        version = event["workflowTaskCompletedEventAttributes"].get("deploymentVersion", {})
        versions.add((version.get("deploymentName", ""), version.get("buildId", "")))
    return versions


async def export_and_replay(stack: Stack, workflow_id: str, scenario: str, tmp_path: Path) -> None:
    """Export a run's history with the real `temporal` CLI, as an operator would, save it
    when recording, and replay it on the current code."""
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
    path = tmp_path / f"{scenario}.json"
    path.write_text(done.stdout)
    capture(scenario, done.stdout)
    [outcome] = await replay_files([path])
    assert outcome.error is None, outcome.error


def record() -> int:
    """Run every recording test once, saving fresh histories in place of the old ones."""
    HISTORIES.mkdir(exist_ok=True)
    for old in saved_histories():
        old.unlink()
    tests = sorted(set(RECORDERS.values()))
    env = {**os.environ, CAPTURE_ENV: str(HISTORIES)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *tests], env=env)
    missing = [s for s in RECORDERS if not history_path(s).exists()]
    if missing:
        print(f"not recorded: {', '.join(missing)}", file=sys.stderr)
        return 1
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(record())
