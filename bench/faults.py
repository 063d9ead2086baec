"""Kill storm: does every track pay and charge exactly once while its worker keeps dying?

Brings up the real stack on loopback by itself: the Temporal dev server, the API
in-process, SQLite and local files, `worker.py` as real subprocesses, and the Replicate
fake from tests/fakes as the only provider. The fake creates each prediction and then
holds its answer (`Late`), so kills land while submits are out; predictions render for
a few seconds.

    baseline  N tracks, one worker, no kills: first create -> all tracks ended
    storm     N tracks while the only worker is SIGKILLed 1-4 s after each "worker ready"
              for --storm-s seconds; then the last worker is left to finish them

Printed: kills, tracks COMPLETE, paid submissions per track (the submission ledger),
predictions created at the fake, credits charged against expected, activity attempts
cut short (from the workflows' histories) and the storm's time against the baseline.

    .venv/bin/python -m bench.faults [--tracks 8] [--storm-s 60] [--seed 7] [--spread-s 0]

--spread-s creates the tracks over that many seconds instead of at once, so that later
kills also find submits out.

Exit status: 1 if any track paid or was charged more than once, 2 if a track did not
COMPLETE within the bounded wait, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlmodel import col, select
from temporalio.client import Client

from api.main import create_app
from core.contracts import JobStatus, RenditionsState
from core.db import SessionFactory, create_engine, session_factory
from core.logging import configure_logging
from core.migrate import upgrade
from core.models import Job as JobRow
from core.models import Plan, ProviderSubmission, Track, User
from core.settings import Settings
from domain.tracks.submissions import SubmissionLedger
from domain.users import create_user
from soundfoundry.devstack import DEV_SERVER_TUNING
from tests.conftest import settings_env
from tests.fakes import Job, Late
from tests.fakes.replicate_server import ReplicateFake
from tests.live_server import LOOPBACK, LiveServer, bound_socket
from tests.services import TemporalDevServer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REPLICATE_TOKEN = "r8_bench-token-0123456789abcdef"
READY_LINE = "worker ready"


# ------------------------------------------------------------------------------------
# The stack (shared with bench.inflight)
# ------------------------------------------------------------------------------------
class WorkerProcesses:
    """`worker.py` subprocesses on the bench's task queue; `stop_all` reaps every one."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.processes: list[subprocess.Popen[bytes]] = []
        self.tails: dict[int, collections.deque[str]] = {}
        self.startup_s: list[float] = []  # spawn -> "worker ready", per worker

    def _spawn(self) -> tuple[subprocess.Popen[bytes], threading.Event]:
        process = subprocess.Popen(
            [sys.executable, str(PROJECT_ROOT / "worker.py")],
            env=self.env,
            # Away from the checkout, so a developer's .env cannot leak into the worker.
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C on the bench reaches the workers only through
            # stop_all, after the figures are safe.
            start_new_session=True,
        )
        self.processes.append(process)
        tail: collections.deque[str] = collections.deque(maxlen=30)
        self.tails[process.pid] = tail
        ready = threading.Event()

        def drain() -> None:
            # One reader for the process's whole life: a full pipe would stall the worker.
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                tail.append(line)
                if READY_LINE in line:
                    ready.set()

        threading.Thread(target=drain, name=f"worker-{process.pid}-log", daemon=True).start()
        return process, ready

    async def start_ready(self, timeout_s: float = 60) -> subprocess.Popen[bytes]:
        """A new worker, returned once it logs "worker ready"."""
        started = time.monotonic()
        process, ready = self._spawn()
        while not ready.is_set():
            if process.poll() is not None:
                raise RuntimeError(
                    f"worker {process.pid} exited ({process.returncode}) before it was ready:\n"
                    + self.tail(process)
                )
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"worker {process.pid} not ready in {timeout_s:g} s")
            await asyncio.sleep(0.02)
        self.startup_s.append(time.monotonic() - started)
        return process

    def tail(self, process: subprocess.Popen[bytes]) -> str:
        return "\n".join(self.tails.get(process.pid, ()))

    async def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no shutdown code runs, as when a host dies."""
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)

    async def terminate(self, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
        await asyncio.to_thread(self._stop, process, timeout_s)

    @staticmethod
    def _stop(process: subprocess.Popen[bytes], timeout_s: float) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(10)

    def stop_all(self, timeout_s: float = 10) -> None:
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._stop(process, timeout_s)


@dataclass
class BenchStack:
    settings: Settings
    http: httpx.AsyncClient
    sessions: SessionFactory
    temporal: Client
    workers: WorkerProcesses
    prompts: dict[str, str] = field(default_factory=dict)  # job id -> its unique prompt

    async def user(self, credits: int) -> tuple[uuid.UUID, dict[str, str]]:
        # Pro: its create rate limit (raised further by the bench settings) and longer tracks.
        user, token = await create_user(
            self.sessions,
            f"bench-{uuid.uuid4().hex[:6]}",
            credits,
            Plan.PRO,
            settings=self.settings,
        )
        return user.id, {"Authorization": f"Bearer {token}"}

    async def create_track(
        self, auth: dict[str, str], prompt: str, duration_s: int
    ) -> dict[str, Any]:
        response = await self.http.post(
            "/api/tracks", json={"prompt": prompt, "duration_s": duration_s}, headers=auth
        )
        if response.status_code != 201:
            raise RuntimeError(f"create failed: {response.status_code} {response.text}")
        created: dict[str, Any] = response.json()
        self.prompts[created["job_id"]] = prompt
        return created

    async def statuses(self, job_ids: Iterable[str]) -> dict[str, JobStatus]:
        ids = [uuid.UUID(j) for j in job_ids]
        async with self.sessions() as session:
            rows = await session.exec(
                select(JobRow.id, JobRow.status).where(col(JobRow.id).in_(ids))
            )
            return {str(job_id): JobStatus(status) for job_id, status in rows}

    async def still_mastering(self, job_ids: Iterable[str]) -> int:
        """How many of these jobs' tracks are still being mastered."""
        ids = [uuid.UUID(j) for j in job_ids]
        async with self.sessions() as session:
            rows = await session.exec(
                select(Track.renditions_state)
                .join(JobRow, col(JobRow.track_id) == col(Track.id))
                .where(col(JobRow.id).in_(ids))
            )
            return sum(1 for state in rows if state is RenditionsState.PENDING)

    async def wait_ended(
        self, job_ids: list[str], timeout_s: float, every_s: float = 0.2
    ) -> tuple[dict[str, JobStatus], float | None]:
        """Statuses once every job has ended (or at the timeout), and when that was."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = await self.statuses(job_ids)
            if len(statuses) == len(job_ids) and all(s.is_terminal for s in statuses.values()):
                return statuses, time.monotonic()
            if time.monotonic() > deadline:
                return statuses, None
            await asyncio.sleep(every_s)

    async def balance(self, user_id: uuid.UUID) -> int:
        async with self.sessions() as session:
            user = await session.get(User, user_id)
            assert user is not None
            return user.credits

    async def ledger(self, job_id: str) -> list[ProviderSubmission]:
        return await SubmissionLedger(self.sessions).for_job(uuid.UUID(job_id))

    async def cut_short(self, workflow_id: str) -> collections.Counter[str]:
        """Activity attempts that a later attempt replaced, by activity type.

        An ActivityTaskStarted event is written once, for the attempt that closed the
        activity, so its `attempt - 1` earlier attempts died or timed out.
        """
        history = await self.temporal.get_workflow_handle(workflow_id).fetch_history()
        names: dict[int, str] = {}
        counts: collections.Counter[str] = collections.Counter()
        for event in history.events:
            if event.HasField("activity_task_scheduled_event_attributes"):
                scheduled = event.activity_task_scheduled_event_attributes
                names[event.event_id] = scheduled.activity_type.name
            elif event.HasField("activity_task_started_event_attributes"):
                started = event.activity_task_started_event_attributes
                if started.attempt > 1:
                    name = names.get(started.scheduled_event_id, "?")
                    counts[name] += started.attempt - 1
        return counts


@contextlib.asynccontextmanager
async def _served(settings: Settings, sock: socket.socket | None) -> AsyncIterator[None]:
    """The API on `sock` (when there is one) for as long as the block runs."""
    if sock is None:
        yield
        return
    server = LiveServer(create_app(settings), sock)  # closes the socket on exit
    await asyncio.to_thread(server.__enter__)
    try:
        yield
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


@contextlib.asynccontextmanager
async def bench_stack(
    fake: ReplicateFake, *, webhooks: bool = False, **overrides: Any
) -> AsyncIterator[BenchStack]:
    """Temporal, SQLite + local files, the API in-process, worker processes on demand.

    With `webhooks`, submissions carry webhook URLs and the API is also served on a
    loopback port (uvicorn in its own thread) where the fake delivers them.
    Everything is torn down on the way out, workers first (killed if they linger).
    """
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as tmp_dir:
        receiver = bound_socket() if webhooks else None
        if receiver is not None:
            overrides = {
                "provider_webhooks_enabled": True,
                "public_base_url": f"http://{LOOPBACK}:{receiver.getsockname()[1]}",
                **overrides,
            }
        tmp = Path(tmp_dir)
        async with TemporalDevServer(ui=False, extra_args=DEV_SERVER_TUNING) as temporal:
            values: dict[str, Any] = {
                "database_url": f"sqlite+aiosqlite:///{tmp / 'bench.db'}",
                "storage_backend": "local",
                "storage_local_dir": tmp / "objects",
                "public_base_url": "http://127.0.0.1",
                "temporal_address": temporal.target_host,
                "task_queue": f"bench-{uuid.uuid4().hex[:8]}",
                "secret_key": "bench-secret-key-for-signing-links",
                "music_providers": ["replicate"],
                "replicate_api_token": REPLICATE_TOKEN,
                "replicate_base_url": fake.url,
                "provider_download_allowed_hosts": ["127.0.0.1"],  # the fake's audio
                **overrides,
            }
            settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
            await asyncio.to_thread(upgrade, settings.database_url)
            engine = create_engine(settings.database_url)
            # The API's own worker-less process; workers read the same settings from env.
            workers = WorkerProcesses({**settings_env(settings), "WORKER_METRICS_PORT": "0"}, tmp)
            try:
                app = create_app(settings)
                async with (
                    _served(settings, receiver),
                    LifespanManager(app),
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
                    ) as http,
                ):
                    yield BenchStack(
                        settings=settings,
                        http=http,
                        sessions=session_factory(engine),
                        temporal=temporal.client,
                        workers=workers,
                    )
            finally:
                await asyncio.to_thread(workers.stop_all)
                await engine.dispose()


# ------------------------------------------------------------------------------------
# The kill storm
# ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    tracks: list[dict[str, Any]]
    statuses: dict[str, JobStatus]
    started: float
    ended: float | None  # None: not every track ended within the bound
    charged: int
    paid: dict[str, int]  # job id -> paid ledger rows
    resolved_via: collections.Counter[str]  # how each paid row's run id became known
    predictions: dict[str, int]  # job id -> predictions the fake created for it
    submitted_at: list[float]  # monotonic, when the fake created each prediction
    cut_short: collections.Counter[str]

    @property
    def complete(self) -> int:
        return sum(s is JobStatus.COMPLETE for s in self.statuses.values())

    @property
    def expected_charge(self) -> int:
        # Kept once by a COMPLETE track; anything else ends refunded.
        return sum(
            t["credits_required"]
            for t in self.tracks
            if self.statuses.get(t["job_id"]) is JobStatus.COMPLETE
        )

    @property
    def took_s(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


async def _make_tracks(
    stack: BenchStack,
    auth: dict[str, str],
    phase: str,
    n: int,
    duration_s: int,
    spread_s: float,
) -> list[dict[str, Any]]:
    """N tracks, created one after another, evenly over `spread_s` (0: at once)."""
    # A unique prompt per track lets us count the fake's predictions per track.
    tag = uuid.uuid4().hex[:6]
    started = time.monotonic()
    tracks = []
    for i in range(n):
        if spread_s and n > 1:
            await asyncio.sleep(max(0.0, started + i * spread_s / (n - 1) - time.monotonic()))
        tracks.append(await stack.create_track(auth, f"bench {phase} {tag} track {i}", duration_s))
    return tracks


async def _outcome(
    stack: BenchStack,
    fake: ReplicateFake,
    tracks: list[dict[str, Any]],
    statuses: dict[str, JobStatus],
    started: float,
    ended: float | None,
    user_id: uuid.UUID,
    credits: int,
) -> Outcome:
    prompts = {stack.prompts[t["job_id"]] for t in tracks}
    ours = [job for job in fake.jobs.values() if job.input.get("prompt") in prompts]
    by_prompt = collections.Counter(str(job.input.get("prompt")) for job in ours)
    cut: collections.Counter[str] = collections.Counter()
    via: collections.Counter[str] = collections.Counter()
    paid: dict[str, int] = {}
    for track in tracks:
        rows = [row for row in await stack.ledger(track["job_id"]) if row.state.paid]
        paid[track["job_id"]] = len(rows)
        via.update(row.resolved_via or "unresolved" for row in rows)
        cut += await stack.cut_short(track["workflow_id"])
    return Outcome(
        tracks=tracks,
        statuses=statuses,
        started=started,
        ended=ended,
        charged=credits - await stack.balance(user_id),
        paid=paid,
        resolved_via=via,
        predictions={t["job_id"]: by_prompt[stack.prompts[t["job_id"]]] for t in tracks},
        submitted_at=sorted(job.submitted_at for job in ours),
        cut_short=cut,
    )


async def run(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    wall_started, load_at_start = time.monotonic(), os.getloadavg()
    n, duration_s = args.tracks, args.duration_s
    credits = 1000  # ample: a 10 s instrumental costs 2
    with ReplicateFake(key=REPLICATE_TOKEN) as fake:
        fake.default_job = Job(running_s=args.render_s)
        async with bench_stack(
            fake,
            provider_request_timeout_s=5,
            heartbeat_timeout_s=3,
            submit_resolve_window_s=2,
            poll_interval_s=0.2,
            retry_initial_interval_s=0.2,
            retry_max_interval_s=2,
            submit_max_attempts=3,
            poll_max_attempts=3,
            rate_limit_create_track_pro=max(20, 2 * n + 10),
        ) as stack:
            workers = stack.workers

            # Baseline: the same load with a worker that is left alone.
            fake.script(submit=[Late(seconds=args.late_s, times=n)])
            base_user, base_auth = await stack.user(credits)
            worker = await workers.start_ready()
            started = time.monotonic()
            tracks = await _make_tracks(stack, base_auth, "baseline", n, duration_s, args.spread_s)
            statuses, ended = await stack.wait_ended(
                [t["job_id"] for t in tracks], args.settle_timeout_s
            )
            baseline = await _outcome(
                stack, fake, tracks, statuses, started, ended, base_user, credits
            )
            await workers.terminate(worker)

            # The storm: tracks are created while the kills go on.
            fake.script(submit=[Late(seconds=args.late_s, times=n)])
            storm_user, storm_auth = await stack.user(credits)
            worker = await workers.start_ready()
            started = time.monotonic()
            async with asyncio.TaskGroup() as group:
                creating = group.create_task(
                    _make_tracks(stack, storm_auth, "storm", n, duration_s, args.spread_s)
                )
                storming = group.create_task(
                    _storm(workers, worker, started + args.storm_s, random.Random(args.seed))
                )
            tracks = creating.result()
            kills, worker = storming.result()
            storm_over = time.monotonic()
            job_ids = [t["job_id"] for t in tracks]
            during = await stack.statuses(job_ids)
            done_in_storm = sum(s is JobStatus.COMPLETE for s in during.values())
            statuses, ended = await stack.wait_ended(job_ids, args.settle_timeout_s)
            storm = await _outcome(
                stack, fake, tracks, statuses, started, ended, storm_user, credits
            )
            if storm.complete < n:
                print("last worker's log:\n" + workers.tail(worker), file=sys.stderr)

    print(machine_load(load_at_start))
    return _report(args, baseline, storm, kills, done_in_storm, storm_over, workers, wall_started)


async def _storm(
    workers: WorkerProcesses,
    worker: subprocess.Popen[bytes],
    ends: float,
    rng: random.Random,
) -> tuple[list[float], subprocess.Popen[bytes]]:
    """SIGKILL the only worker 1-4 s after each "worker ready" until `ends`; returns the
    kill times and the worker left running."""
    kills: list[float] = []
    while True:
        # Each worker gets a few seconds of real work before it dies.
        delay = rng.uniform(1.0, 4.0)
        if time.monotonic() + delay >= ends:
            await asyncio.sleep(max(0.0, ends - time.monotonic()))
            return kills, worker
        await asyncio.sleep(delay)
        await workers.kill(worker)
        kills.append(time.monotonic())
        worker = await workers.start_ready()


def machine_load(at_start: tuple[float, float, float]) -> str:
    """Load averages (1 min) at start and now: timings mean little on a busy machine."""
    return (
        f"machine: {os.cpu_count()} cores, 1-min load average {at_start[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end"
    )


def _histogram(values: Iterable[int]) -> str:
    counts = collections.Counter(values)
    return ", ".join(f"{k} on {v} track(s)" for k, v in sorted(counts.items())) or "none"


def _report(
    args: argparse.Namespace,
    baseline: Outcome,
    storm: Outcome,
    kills: list[float],
    done_in_storm: int,
    storm_over: float,
    workers: WorkerProcesses,
    wall_started: float,
) -> int:
    n = args.tracks
    violations: list[str] = []
    for name, outcome in (("baseline", baseline), ("storm", storm)):
        twice = [j for j, count in outcome.paid.items() if count > 1]
        if twice:
            violations.append(f"{name}: {len(twice)} track(s) paid more than once (ledger)")
        extra = [j for j, count in outcome.predictions.items() if count > 1]
        if extra:
            violations.append(f"{name}: {len(extra)} track(s) with >1 prediction at the fake")
        if outcome.charged > outcome.expected_charge:
            violations.append(
                f"{name}: charged {outcome.charged} credits, expected {outcome.expected_charge}"
            )

    def took(outcome: Outcome) -> str:
        return "not all ended" if outcome.took_s is None else f"{outcome.took_s:.1f} s"

    startup = workers.startup_s
    print(
        f"tracks: {n} x {args.duration_s} s instrumental, replicate fake: submit answers "
        f"{args.late_s:g} s late, renders {args.render_s:g} s"
    )
    print(
        f"worker start -> ready: median {statistics.median(startup):.2f} s, "
        f"max {max(startup):.2f} s over {len(startup)} starts"
    )
    print()
    print(f"baseline (no kills)   tracks COMPLETE         {baseline.complete} / {n}")
    print(f"                      first create -> ended   {took(baseline)}")
    print(
        f"                      predictions at fake     {sum(baseline.predictions.values())} "
        f"for {n} tracks"
    )
    print(f"                      attempts cut short      {sum(baseline.cut_short.values())}")
    print()
    print(f"storm                 duration                {args.storm_s:g} s (seed {args.seed})")
    print(f"                      kills (SIGKILL)         {len(kills)}")
    # A submit is out from the moment the fake creates the prediction until its late answer.
    windows = [(t, t + args.late_s) for t in storm.submitted_at]
    kills_mid_submit = sum(any(a <= k <= b for a, b in windows) for k in kills)
    submits_hit = sum(any(a <= k <= b for k in kills) for a, b in windows)
    print(
        f"                      kills mid-submit        {kills_mid_submit} "
        f"(hitting {submits_hit} of {len(windows)} submits while their answer was out)"
    )
    print(f"                      tracks COMPLETE         {storm.complete} / {n}")
    print(f"                      done during the storm   {done_in_storm} / {n}")
    print(f"                      paid submissions        {_histogram(storm.paid.values())}")
    via = ", ".join(f"{name} {c}" for name, c in storm.resolved_via.most_common())
    print(f"                      run id learnt from      {via}")
    print(
        f"                      predictions at fake     {sum(storm.predictions.values())} "
        f"for {n} tracks (per track: {_histogram(storm.predictions.values())})"
    )
    print(
        f"                      credits charged         {storm.charged} "
        f"(expected {storm.expected_charge}: each COMPLETE track once)"
    )
    by_activity = ", ".join(f"{name} {c}" for name, c in storm.cut_short.most_common())
    print(
        f"                      attempts cut short      {sum(storm.cut_short.values())}"
        + (f" ({by_activity})" if by_activity else "")
    )
    print(f"                      first create -> ended   {took(storm)}")
    if storm.ended is not None:
        print(f"                      storm end -> ended      {storm.ended - storm_over:.1f} s")
    if storm.took_s is not None and baseline.took_s:
        print(
            f"                      storm / baseline        {storm.took_s / baseline.took_s:.2f}x"
        )
    print()
    print(f"wall time {time.monotonic() - wall_started:.1f} s")
    if violations:
        print("PAY-ONCE VIOLATED: " + "; ".join(violations))
        return 1
    print("pay once, charge once: held for every track")
    if storm.complete < n or baseline.complete < n:
        print("NOT ALL TRACKS COMPLETE")
        return 2
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=8, help="tracks per phase")
    parser.add_argument("--storm-s", type=float, default=60, help="how long workers are killed")
    parser.add_argument("--seed", type=int, default=7, help="seeds the kill delays")
    parser.add_argument("--duration-s", type=int, default=10, help="track length asked for")
    parser.add_argument("--late-s", type=float, default=1.5, help="submit answer delay")
    parser.add_argument("--render-s", type=float, default=15, help="prediction render time")
    parser.add_argument(
        "--spread-s",
        type=float,
        default=0,
        help="create the tracks evenly over this many seconds (0: all at once), so later "
        "kills also find submits out",
    )
    parser.add_argument(
        "--settle-timeout-s",
        type=float,
        default=300,
        help="bound on waiting for the tracks to end (a killed collect_audio fits)",
    )
    args = parser.parse_args()
    if args.tracks < 1 or args.spread_s >= args.storm_s:
        parser.error("need --tracks >= 1 and --spread-s < --storm-s")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
