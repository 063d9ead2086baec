"""A rollout at the bad moment, with real `soundfoundry worker` processes.

Version A's worker has tracks in flight: some waiting on the provider, one being mastered.
Version B's worker starts, the operator makes B current (`soundfoundry deploy
set-current`), new tracks run on B, and A's tracks finish on A: none fails, none is paid
twice, none moves between versions. Then A drains and its worker stops. The second case
gives B an incompatible TrackWorkflow (a step added before every submit): it changes
nothing for A's runs, because a pinned run never replays on another version.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.common import VersioningBehavior

from core.contracts import JobStatus, SubmissionState
from core.models import Plan
from core.worker_deployment import describe
from tests.conftest import PROJECT_ROOT, Stack, eventually
from tests.e2e.rollout_variant import EXTRA_STEP
from tests.e2e.test_cli import _answers as answers
from tests.e2e.test_cli import run_cli
from tests.e2e.test_operators import reconciler, temporal
from tests.e2e.test_pay_once import ledger_states
from tests.fakes import Job
from tests.fakes.fixtures import fal, replicate, stack_overrides
from tests.fakes.replicate_server import ReplicateFake
from tests.services import start_dev_stack

__all__ = ["fal", "reconciler", "replicate", "stack_overrides"]

SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"
WORKER = [str(SOUNDFOUNDRY), "worker"]
# Version B with a step added in the middle of TrackWorkflow.
INCOMPATIBLE_WORKER = [sys.executable, "-m", "tests.e2e.rollout_variant"]
# A provider job that runs until the test releases it.
HELD = Job(running_s=3600)


@pytest.fixture
def start_worker() -> bool:
    return False  # each version's worker is a process of its own


@pytest.fixture
def extra_overrides() -> dict[str, Any]:
    # A deployment of its own: the session's server has the other tests' deployments.
    return {
        "music_providers": ["replicate"],
        "worker_deployment_name": f"rollout-{uuid.uuid4().hex[:8]}",
        "worker_metrics_port": 0,
    }


@dataclass
class Version:
    """One build id's worker processes."""

    build_id: str
    command: list[str]
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> None:
        with (self.logs / f"worker-{self.build_id}.log").open("ab") as log:
            self.processes.append(
                subprocess.Popen(
                    self.command,
                    env={**self.env, "WORKER_BUILD_ID": self.build_id},
                    cwd=PROJECT_ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    @property
    def pids(self) -> set[str]:
        return {str(process.pid) for process in self.processes}

    def stop(self) -> list[int]:
        """SIGTERM, as a deploy stops workers; their exit codes."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return [process.wait(timeout=60) for process in self.processes]


@pytest.fixture
def versions(stack: Stack, tmp_path: Path) -> Iterator[dict[str, Version]]:
    made: dict[str, Version] = {}
    yield made
    for version in made.values():
        for process in version.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@dataclass(frozen=True)
class RunOn:
    """Where one track's run was executed, from its history and description."""

    pinned_to: str
    behaviour: VersioningBehavior
    build_ids: frozenset[str]  # of every completed workflow task
    pids: frozenset[str]  # of every worker that took a workflow or activity task
    failed_tasks: int  # workflow tasks that failed (a replay that did not match)
    extra_steps: int  # timers of B's incompatible change


async def run_on(client: Client, workflow_id: str) -> RunOn:
    handle = client.get_workflow_handle(workflow_id)
    info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    build_ids: set[str] = set()
    pids: set[str] = set()
    failed = extra = 0
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_task_completed_event_attributes"):
            completed = event.workflow_task_completed_event_attributes
            build_ids.add(completed.deployment_version.build_id)
            pids.add(completed.identity.split("@")[0])
        elif event.HasField("activity_task_started_event_attributes"):
            pids.add(event.activity_task_started_event_attributes.identity.split("@")[0])
        elif event.HasField("workflow_task_failed_event_attributes"):
            failed += 1
        elif event.HasField("timer_started_event_attributes"):
            summary = event.user_metadata.summary.data.decode() if event.user_metadata else ""
            extra += EXTRA_STEP in summary
    return RunOn(
        pinned_to=info.deployment_version.build_id,
        behaviour=VersioningBehavior(info.behavior),
        build_ids=frozenset(build_ids),
        pids=frozenset(pids),
        failed_tasks=failed,
        extra_steps=extra,
    )


def release(replicate: ReplicateFake, job_ids: list[str]) -> None:
    """The provider finishes the held jobs (they succeed at their next poll)."""
    for job_id in job_ids:
        job = replicate.jobs[job_id]
        job.spec = dataclasses.replace(job.spec, running_s=0.0)


async def version_state(stack: Stack) -> dict[str, str]:
    state = await describe(stack.temporal.client, stack.settings.worker_deployment_name)
    return {} if state is None else {v.build_id: v.status for v in state.versions}


async def deploy(stack: Stack, *args: str) -> str:
    done = await stack.cli("deploy", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def row(status: str, build_id: str) -> tuple[str, int]:
    """What `deploy status` says of `build_id`: its status (with a ramp's percentage) and
    how many pinned runs it has open."""
    cells = next(cells for line in status.splitlines() if (cells := line.split())[:1] == [build_id])
    count = next(i for i, cell in enumerate(cells) if cell.isdigit())
    return " ".join(cells[1:count]), int(cells[count])


@pytest.mark.parametrize(
    "b_command", [WORKER, INCOMPATIBLE_WORKER], ids=["compatible", "incompatible"]
)
async def test_a_rollout_at_the_bad_moment_moves_no_run_and_pays_each_once(
    stack: Stack,
    replicate: ReplicateFake,
    versions: dict[str, Version],
    reconciler: None,
    b_command: list[str],
    tmp_path: Path,
) -> None:
    incompatible = b_command is INCOMPATIBLE_WORKER
    a = versions["A"] = Version("build-a", WORKER, stack.env, tmp_path)
    b = versions["B"] = Version("build-b", b_command, stack.env, tmp_path)
    user_id, auth = await stack.user(credits=1000, plan=Plan.PRO)

    # The first version of a deployment becomes current by itself.
    a.start()

    async def a_is_current() -> bool:
        return (await version_state(stack)).get(a.build_id) == "current"

    await eventually(a_is_current, timeout_s=60, what="version A to become current")

    # Two tracks on A wait on the provider...
    replicate.script(jobs=[HELD, HELD])
    waiting = [await stack.create_track(auth, duration_s=6) for _ in range(2)]
    await eventually(lambda: replicate.submissions == 2, timeout_s=60, what="A's submits")
    held = list(replicate.jobs)

    # B cannot be made current before its workers poll: the server refuses, in one line.
    refused = await stack.cli("deploy", "set-current", b.build_id)
    assert refused.returncode == 1 and "the server refused" in refused.stderr, refused

    # ...B's worker starts beside A (not current yet: nothing moves to it)...
    b.start()

    async def b_is_polling() -> bool:
        return (await version_state(stack)).get(b.build_id) == "inactive"

    await eventually(b_is_polling, timeout_s=60, what="version B's worker to poll")
    if not incompatible:
        # A ramp of 0% is shown but routes nothing.
        await deploy(stack, "set-current", b.build_id, "--ramp", "0")
        assert row(await deploy(stack, "status"), b.build_id)[0] == "ramping (0%)"

    # ...and one track on A will be mastered (four minutes of audio: ~12 s of CPU; the
    # vocals model, as Replicate's instrumental one makes at most 30 s).
    replicate.script(jobs=[Job(duration_s=240)])
    mastering = await stack.create_track(
        auth, prompt="Long drone", duration_s=240, has_vocals=True, lyrics="la la la"
    )

    async def three_open_on_a() -> bool:
        return row(await deploy(stack, "status"), a.build_id) == ("current", 3)

    # A run is pinned once its first workflow task is done.
    await eventually(three_open_on_a, timeout_s=30, what="3 runs open on A in deploy status")
    status = await deploy(stack, "status")
    assert row(status, b.build_id)[1] == 0, status
    name = stack.settings.worker_deployment_name
    described = await temporal(stack, "worker", "deployment", "describe", "--name", name)
    assert a.build_id in described and b.build_id in described, described

    # The operator switches while it is being mastered: the bad moment.
    done = await stack.wait_for_job(mastering["job_id"], auth, timeout_s=120, mastered=False)
    assert done["status"] == JobStatus.COMPLETE
    await deploy(stack, "set-current", b.build_id)
    track = (await stack.http.get(f"/api/tracks/{mastering['track_id']}", headers=auth)).json()
    assert track["renditions_state"] == "pending", "mastering ended before the switch"
    for created in waiting:
        job = (await stack.http.get(f"/api/jobs/{created['job_id']}", headers=auth)).json()
        assert job["status"] == JobStatus.RENDERING, "no longer waiting at the switch"
    status = await deploy(stack, "status")
    assert row(status, a.build_id) == ("draining", 3), status
    assert row(status, b.build_id) == ("current", 0), status

    # New tracks start on B while A's are still in flight.
    fresh = [await stack.create_track(auth, duration_s=6) for _ in range(2)]
    for created in fresh:
        job = await stack.wait_for_job(created["job_id"], auth, timeout_s=90)
        assert job["status"] == JobStatus.COMPLETE, (job.get("error_message"), job)

    # The provider finishes A's held jobs: A's worker collects, completes and masters.
    release(replicate, held)
    for created in [*waiting, mastering]:
        job = await stack.wait_for_job(created["job_id"], auth, timeout_s=180)
        assert job["status"] == JobStatus.COMPLETE, (job.get("error_message"), job)

    # A has drained (the server agrees); its worker stops cleanly.
    async def a_drained() -> bool:
        return (await version_state(stack)).get(a.build_id) == "drained"

    await eventually(a_drained, timeout_s=60, what="version A to drain")
    assert row(await deploy(stack, "status"), a.build_id) == ("drained", 0)
    assert a.stop() == [0]

    # B alone carries on.
    last = await stack.create_track(auth, duration_s=6)
    assert (await stack.wait_for_job(last["job_id"], auth, timeout_s=90))["status"] == "COMPLETE"
    fresh.append(last)

    # None moved between versions: every workflow and activity task of A's runs (the
    # mastering included) ran on A's worker, every one of B's on B's.
    for created, version in [*((c, a) for c in (*waiting, mastering)), *((c, b) for c in fresh)]:
        seen = await run_on(stack.temporal.client, created["workflow_id"])
        assert seen.pinned_to == version.build_id, (created, seen)
        assert seen.behaviour is VersioningBehavior.PINNED
        assert seen.build_ids == {version.build_id}, (created, seen)
        assert seen.pids <= version.pids, (created, seen, version.pids)
        assert seen.failed_tasks == 0, (created, seen)
        # B's incompatible step ran in B's runs only; A's never met it.
        took_extra_step = incompatible and version is b
        assert (seen.extra_steps > 0) is took_extra_step, (created, seen)

    # None failed or was paid twice: one prediction and one charge per track.
    tracks = [*waiting, mastering, *fresh]
    assert replicate.submissions == len(tracks)
    for created in tracks:
        assert await ledger_states(stack, created["job_id"]) == [SubmissionState.FINISHED]
        track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
        assert track["renditions_state"] == "ready", track
    spent = sum(created["credits_required"] for created in tracks)
    assert await stack.credits(user_id) == 1000 - spent


async def test_an_unversioned_worker_refuses_where_versioning_is_in_use(
    stack: Stack, versions: dict[str, Version], tmp_path: Path
) -> None:
    """WORKER_VERSIONING=off against a namespace whose deployment routes to a version: the
    worker would get none of the new work, so it does not start, and says why in a line."""
    a = versions["A"] = Version("build-a", WORKER, stack.env, tmp_path)
    a.start()

    async def a_is_current() -> bool:
        return (await version_state(stack)).get(a.build_id) == "current"

    await eventually(a_is_current, timeout_s=60, what="version A to become current")
    refused = await stack.cli("worker", WORKER_VERSIONING="off")
    assert refused.returncode != 0
    reason = refused.stderr.strip().splitlines()[-1]
    assert reason.startswith("refusing to start: WORKER_VERSIONING is off"), refused.stderr
    assert stack.settings.worker_deployment_name in reason or "routes new work" in reason


def test_the_dev_stack_makes_the_code_it_runs_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`soundfoundry dev` needs no rollout: each start makes its worker's version current,
    also over a Temporal database an earlier version of the code left behind."""
    for build_id, versions_seen in (("dev-1", {"dev-1"}), ("dev-2", {"dev-1", "dev-2"})):
        monkeypatch.setenv("WORKER_BUILD_ID", build_id)
        stack = start_dev_stack(tmp_path, SOUNDFOUNDRY)
        env = {**stack.env, "TEMPORAL_ADDRESS": f"127.0.0.1:{stack.frontend}"}
        try:
            token_file = tmp_path / ".soundfoundry" / "dev-token"
            deadline = time.monotonic() + 120
            while not (token_file.exists() and answers(f"http://127.0.0.1:{stack.api}/api/health")):
                assert stack.process.poll() is None, "soundfoundry dev exited early"
                assert time.monotonic() < deadline, "the dev stack did not come up"
                time.sleep(0.5)
            out = run_cli(
                "create", "Warm ambient pad", "--duration", "6", "--wait",
                "--out", str(tmp_path / "out"), "--api-url", f"http://127.0.0.1:{stack.api}",
                cwd=tmp_path, env={**env, "SOUNDFOUNDRY_TOKEN": token_file.read_text().strip()},
            )  # fmt: skip
            assert Path(out.strip().splitlines()[-1]).exists()
            status = run_cli("deploy", "status", cwd=tmp_path, env=env)
            assert f"current: {build_id}" in status, status
            listed = {cells[0] for line in status.splitlines() if (cells := line.split())}
            assert versions_seen <= listed, status
        finally:
            stack.process.send_signal(signal.SIGINT)
            assert stack.process.wait(timeout=60) == 0
