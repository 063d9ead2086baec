"""The guarantees on a production topology (tests/cluster.py): temporal-server on
PostgreSQL with mTLS on its frontend, history and matching in their own process, two API
and two worker processes, the fal and Replicate fakes. Faults at the worst moments: a
worker SIGKILLed and an API killed mid-burst, the frontend restarted mid-run, operators'
terminate and cancel through the real CLI, clients without a valid certificate.

One cluster for the module (it takes ~20 s to start); each test leaves two APIs and two
workers running. `pytest -m cluster` runs this tier alone, `-m "not cluster"` skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func
from sqlmodel import col, select

from core.contracts import SubmissionState
from core.db import SessionFactory, create_engine, session_factory
from core.models import Job, Plan, User
from domain.tracks.submissions import SubmissionLedger
from domain.users import create_user
from tests.cluster import SOUNDFOUNDRY, CertificateAuthority, Topology
from tests.conftest import eventually
from tests.fakes import Job as FakeJob
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import FAL_KEY, REPLICATE_TOKEN, hosted_settings
from tests.fakes.replicate_server import ReplicateFake

pytestmark = pytest.mark.cluster

BURST = 44


def as_env(settings: dict[str, Any]) -> dict[str, str]:
    """Settings as the environment variables the processes read."""
    return {
        name.upper(): ",".join(value) if isinstance(value, list) else str(value)
        for name, value in settings.items()
    }


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FalFake, ReplicateFake]]:
    with FalFake(key=FAL_KEY) as fal, ReplicateFake(key=REPLICATE_TOKEN) as replicate:
        yield fal, replicate


@pytest.fixture(scope="module")
def topology(fakes: tuple[FalFake, ReplicateFake]) -> Iterator[Topology]:
    fal, replicate = fakes
    settings = hosted_settings(
        fal,
        replicate,
        heartbeat_timeout_s=5,
        poll_interval_s=0.3,
        retry_initial_interval_s=0.2,
        retry_max_interval_s=2,
        reconcile_interval_s=1,
        # A create whose API died before it started the workflow is started by this.
        reconcile_start_after_s=5,
        rate_limit_create_track_pro=10 * BURST,
    )
    with Topology(env=as_env(settings)) as running:
        yield running


@pytest.fixture
def fal(fakes: tuple[FalFake, ReplicateFake], topology: Topology) -> FalFake:
    fakes[0].reset_counters()
    fakes[1].reset_counters()
    return fakes[0]


@pytest.fixture
def replicate(fakes: tuple[FalFake, ReplicateFake], fal: FalFake) -> ReplicateFake:
    return fakes[1]


@pytest_asyncio.fixture
async def sessions(topology: Topology) -> AsyncIterator[SessionFactory]:
    engine = create_engine(topology.database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture(autouse=True)
def whole_topology_after(topology: Topology) -> Iterator[None]:
    """Each test starts with two APIs and two workers, whatever the previous one killed."""
    yield
    topology.restore()


class Client:
    """A user of the service behind a load balancer over both APIs: requests go round
    robin; a request an API cannot answer (killed) is sent to the next one with the same
    Idempotency-Key, as a load balancer's retry would."""

    def __init__(self, urls: list[str], token: str) -> None:
        self.urls = urls
        self.auth = {"Authorization": f"Bearer {token}"}
        self.http = httpx.AsyncClient(timeout=30)
        self._next = 0
        self.retried = 0  # requests an API could not answer, sent to the next one

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        last: Exception | None = None
        first = self._next
        self._next += 1
        # Round robin over requests; a request's retries go to the next API and around.
        for attempt in range(2 * len(self.urls)):
            url = self.urls[(first + attempt) % len(self.urls)]
            try:
                return await self.http.request(
                    method, url + path, headers={**self.auth, **(headers or {})}, **kwargs
                )
            except httpx.TransportError as exc:
                last = exc
                self.retried += 1
        raise AssertionError(f"no API answered {method} {path}: {last}")

    async def create(self, n: int) -> dict[str, Any]:
        response = await self.request(
            "POST",
            "/api/tracks",
            json={"prompt": f"cluster burst {n}", "duration_s": 10},
            headers={"Idempotency-Key": f"burst-{uuid.uuid4().hex}"},
        )
        assert response.status_code in (201, 202), response.text
        created: dict[str, Any] = response.json()
        return created

    async def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = (await self.request("GET", f"/api/jobs/{job_id}")).json()
        return job

    async def wait_all(
        self, job_ids: list[str], until: set[str], timeout_s: float
    ) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        seen: dict[str, dict[str, Any]] = {}
        while True:
            for job_id in job_ids:
                if seen.get(job_id, {}).get("status") not in until:
                    seen[job_id] = await self.job(job_id)
            if all(job["status"] in until for job in seen.values()):
                return seen
            if time.monotonic() > deadline:
                stuck = {j["status"] for j in seen.values() if j["status"] not in until}
                raise AssertionError(f"not all {sorted(until)} in {timeout_s} s: {stuck}")
            await asyncio.sleep(0.5)


@pytest_asyncio.fixture
async def user(
    topology: Topology, sessions: SessionFactory
) -> AsyncIterator[tuple[uuid.UUID, Client]]:
    created, token = await create_user(sessions, f"u-{uuid.uuid4().hex[:6]}", 1000, Plan.PRO)
    client = Client(topology.api_urls, token)
    try:
        yield created.id, client
    finally:
        await client.http.aclose()


async def credits_of(sessions: SessionFactory, user_id: uuid.UUID) -> int:
    async with sessions() as session:
        found = await session.get(User, user_id)
        assert found is not None
        return found.credits


async def jobs_of(sessions: SessionFactory, user_id: uuid.UUID) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(Job).where(col(Job.user_id) == user_id)
        )
        return int(count or 0)


async def ledger(sessions: SessionFactory, job_id: str) -> list[SubmissionState]:
    rows = await SubmissionLedger(sessions).for_job(uuid.UUID(job_id))
    return [row.state for row in rows]


# -- a burst over both APIs, a worker and an API killed in the middle ------------------


async def test_burst_survives_a_killed_worker_and_a_killed_api(
    topology: Topology,
    fal: FalFake,
    replicate: ReplicateFake,
    sessions: SessionFactory,
    user: tuple[uuid.UUID, Client],
) -> None:
    user_id, client = user
    # Each job runs ~3 s at fal: the kills land while tracks are being generated.
    fal.script(jobs=[FakeJob(running_s=3)] * BURST)
    gate = asyncio.Semaphore(8)
    killed = asyncio.Event()

    async def create(n: int) -> dict[str, Any]:
        async with gate:
            created = await client.create(n)
        if n == BURST // 3 and not killed.is_set():
            killed.set()
            topology.kill_worker(0)  # SIGKILL, with activities in flight
            topology.kill_api(1)  # SIGKILL, with requests in flight
        return created

    created = await asyncio.gather(*(create(n) for n in range(BURST)))
    assert killed.is_set() and client.retried > 0, "no create met the killed API"
    job_ids = [c["job_id"] for c in created]
    assert len(set(job_ids)) == BURST
    jobs = await client.wait_all(job_ids, {"COMPLETE", "FAILED", "CANCELLED", "TERMINATED"}, 240)
    assert {job["status"] for job in jobs.values()} == {"COMPLETE"}
    # One paid provider job and one charge per track; nothing created twice by the
    # retries. A worker killed after committing a fal submit and before sending it leaves
    # that submit unresolvable (fal has no listing): after the resolve window the track
    # goes on at Replicate. Still one job at the providers for it, counted by the fakes.
    assert fal.submissions + replicate.submissions == BURST, (
        fal.submissions,
        replicate.submissions,
    )
    assert await jobs_of(sessions, user_id) == BURST
    unresolved = {SubmissionState.AMBIGUOUS, SubmissionState.REJECTED}
    for job_id in job_ids:
        states = await ledger(sessions, job_id)
        assert states[-1] is SubmissionState.FINISHED and set(states[:-1]) <= unresolved, states
    charged = sum(c["credits_required"] for c in created)
    assert await credits_of(sessions, user_id) == 1000 - charged


# -- the frontend restarts; history and matching run on -----------------------------


async def test_every_track_completes_across_a_frontend_restart(
    topology: Topology, fal: FalFake, sessions: SessionFactory, user: tuple[uuid.UUID, Client]
) -> None:
    user_id, client = user
    n = 12
    fal.script(jobs=[FakeJob(running_s=4)] * n)
    created = [await client.create(i) for i in range(n)]
    await eventually(lambda: fal.submissions >= n // 2, timeout_s=30, what="submissions")
    backend = topology.cluster.backend
    assert backend is not None
    backend_pid = backend.pid
    await asyncio.to_thread(topology.cluster.restart_frontend, 2.0)
    # Only the frontend went down: history and matching ran on in their own process.
    assert backend.alive() and backend.pid == backend_pid
    job_ids = [c["job_id"] for c in created]
    jobs = await client.wait_all(job_ids, {"COMPLETE", "FAILED", "CANCELLED", "TERMINATED"}, 180)
    assert {job["status"] for job in jobs.values()} == {"COMPLETE"}
    assert fal.submissions == n
    for job_id in job_ids:
        assert await ledger(sessions, job_id) == [SubmissionState.FINISHED], job_id
    assert await credits_of(sessions, user_id) == 1000 - sum(c["credits_required"] for c in created)


# -- operators: the real CLI with the client certificate ------------------------------


@pytest.mark.parametrize("action", ["terminate", "cancel"])
async def test_cli_ends_a_run_and_the_database_and_provider_follow(
    topology: Topology,
    fal: FalFake,
    sessions: SessionFactory,
    user: tuple[uuid.UUID, Client],
    action: str,
) -> None:
    user_id, client = user
    fal.script(jobs=[FakeJob(running_s=120)])
    created = await client.create(0)
    await eventually(lambda: fal.polls > 0, timeout_s=30, what="fal polling")
    (fal_job,) = [job for job in fal.jobs.values() if not job.done]
    await asyncio.to_thread(
        topology.cluster.cli, "workflow", action, "--workflow-id", created["workflow_id"]
    )
    ended = time.monotonic()
    want = "TERMINATED" if action == "terminate" else "CANCELLED"
    jobs = await client.wait_all([created["job_id"]], {want}, 15)
    took = time.monotonic() - ended
    assert jobs[created["job_id"]]["credits_refunded"] is True
    await eventually(lambda: fal_job.cancelled, timeout_s=15, what="the fal job cancelled")
    assert await credits_of(sessions, user_id) == 1000
    assert await ledger(sessions, created["job_id"]) == [SubmissionState.CANCELLED]
    print(f"{action} -> database {want} in {took:.1f} s")


# -- clients without a valid certificate are refused, in one sentence ---------------


def doctor(topology: Topology, **overrides: str | None) -> subprocess.CompletedProcess[str]:
    env = {**topology.env}
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [str(SOUNDFOUNDRY), "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def temporal_line(output: str) -> str:
    """Doctor's verdict on Temporal (its table row, not a log line that names Temporal)."""
    (line,) = [
        line for line in output.splitlines() if re.match(r"\s*(PASS|FAIL)\s+temporal\b", line)
    ]
    return line


def test_a_client_without_a_certificate_is_refused_in_one_sentence(topology: Topology) -> None:
    done = doctor(topology, TEMPORAL_TLS_CLIENT_CERT_PATH=None, TEMPORAL_TLS_CLIENT_KEY_PATH=None)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    line = temporal_line(done.stdout)
    assert "FAIL" in line and "requires a client certificate" in line, done.stdout


def test_a_certificate_from_another_ca_is_refused_in_one_sentence(
    topology: Topology, tmp_path: Any
) -> None:
    stranger = CertificateAuthority(tmp_path, "stranger").issue("soundfoundry")
    done = doctor(
        topology,
        TEMPORAL_TLS_CLIENT_CERT_PATH=str(stranger.cert),
        TEMPORAL_TLS_CLIENT_KEY_PATH=str(stranger.key),
    )
    assert done.returncode == 1
    line = temporal_line(done.stdout)
    assert "FAIL" in line and "rejected our client certificate" in line, done.stdout
    # Nothing of the key file reaches the output.
    with contextlib.suppress(OSError):
        key = stranger.key.read_text()
        assert key.splitlines()[1] not in done.stdout + done.stderr


def test_doctor_passes_with_the_certificate(topology: Topology) -> None:
    done = doctor(topology)
    assert "FAIL" not in temporal_line(done.stdout), done.stdout
