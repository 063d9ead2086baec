"""The pipeline's own cost: an instant provider, so every millisecond measured is ours.

The issue: "Fast and lean: the pipeline's own cost, measured against a plain task-queue
baseline". The stack is the embedded default on loopback (Temporal dev server, SQLite,
local files, the API in-process, ONE `worker.py` process; bench.faults.bench_stack), the
provider the Replicate fake with predictions that succeed at once (5 s WAV).

    sequential   tracks one at a time: POST /api/tracks -> job COMPLETE (p50, p95); the
                 next starts once the previous one's mastering has ended
    burst        B tracks at once: sustained tracks/s (first POST -> last COMPLETE) and
                 when the last one's mastered files exist (mastering follows COMPLETE),
                 the median POST -> COMPLETE
    RSS          worker peak (VmHWM) over the run

`--baseline` runs the same work through a plain Celery + Redis pipeline
(bench.celery_baseline: one task submits, polls, downloads, checks, stores the audio
and an SVG cover and writes SQLite state) in the same run, and prints every figure as a
ratio to it.

    .venv/bin/python -m bench.pipeline [--sequential 30] [--burst 200] [--workers 1]
                                       [--postgres-s3]
                                       [--baseline] [--baseline-processes 1] [--timeline]

`--topology` runs instead the burst (--burst, --duration-s, --create-concurrency) on the
production topology and on the dev server, 2 APIs and 2 workers each (bench.topology).

Exit status 1 if a target is missed, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType

from bench.faults import REPLICATE_TOKEN, BenchStack, bench_stack, machine_load
from bench.inflight import RssSampler, _activity_times, _spread
from bench.procs import cpu_seconds, tree_cpu_seconds, tree_status
from core.contracts import JobStatus
from core.logging import configure_logging
from tests.fakes import Job
from tests.fakes.replicate_server import ReplicateFake
from tests.services import PostgresCluster, VersityGateway

MB = 1024 * 1024
SEQUENTIAL_P50_TARGET_MS = 250.0
BURST_TARGET_PER_S = 10.0
BASELINE_SHARE_TARGET = 0.6
RSS_TARGET_MB = 300.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _until_terminal(
    stack: BenchStack,
    auth: dict[str, str],
    job_ids: list[str],
    timeout_s: float,
    every_s: float,
) -> dict[str, float]:
    """When each job was first seen terminal (monotonic), reading the database."""
    ended: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(ended) < len(job_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(job_ids) - len(ended)} tracks not done in {timeout_s} s")
        statuses = await stack.statuses([j for j in job_ids if j not in ended])
        now = time.monotonic()
        for job_id, status in statuses.items():
            if status.is_terminal:
                if status is not JobStatus.COMPLETE:
                    response = await stack.http.get(f"/api/jobs/{job_id}/logs", headers=auth)
                    raise RuntimeError(f"job {job_id} ended {status.value}: {response.text}")
                ended[job_id] = now
        await asyncio.sleep(every_s)
    return ended


async def _until_mastered(
    stack: BenchStack, job_ids: list[str], timeout_s: float, every_s: float
) -> None:
    """Until none of these tracks is still being mastered (it follows COMPLETE)."""
    deadline = time.monotonic() + timeout_s
    while await stack.still_mastering(job_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"tracks still being mastered after {timeout_s} s")
        await asyncio.sleep(every_s)


async def measure_ours(args: argparse.Namespace, fake: ReplicateFake) -> dict[str, Any]:
    with contextlib.ExitStack() as services:
        overrides: dict[str, Any] = {}
        if args.postgres_s3:
            # The production shape: Postgres and a real S3 server, both on loopback.
            postgres = services.enter_context(PostgresCluster())
            s3 = services.enter_context(VersityGateway())
            overrides = {
                "database_url": postgres.create_database("bench"),
                "storage_backend": "s3",
                "s3_endpoint": s3.endpoint,
                "s3_access_key": s3.access_key,
                "s3_secret_key": s3.secret_key,
                "s3_bucket": s3.create_bucket("sf-bench"),
            }
        return await _measure_on(args, fake, overrides)


async def _measure_on(
    args: argparse.Namespace, fake: ReplicateFake, overrides: dict[str, Any]
) -> dict[str, Any]:
    async with bench_stack(
        fake,
        # Every create of the burst falls in one rate-limit window.
        rate_limit_create_track_pro=args.burst + args.sequential + 10,
        **overrides,
    ) as stack:
        _, auth = await stack.user(credits=10 * (args.burst + args.sequential + 5))
        worker = await stack.workers.start_ready()
        # More worker processes on the same task queue share the burst (scale out).
        extra = [await stack.workers.start_ready() for _ in range(args.workers - 1)]
        rss_at_ready = tree_status(worker.pid, "VmRSS")
        cpu_at_ready = tree_cpu_seconds(worker.pid)
        sampler = RssSampler(worker.pid)
        sampling = asyncio.create_task(sampler.run())
        try:
            # A warm-up track: the first one pays for imports and caches.
            warm = await stack.create_track(auth, "warm-up", args.duration_s)
            await _until_terminal(stack, auth, [warm["job_id"]], 60, 0.005)
            await _until_mastered(stack, [warm["job_id"]], 60, 0.005)
            sequential_ms: list[float] = []
            sequential_ids: list[str] = []
            for i in range(args.sequential):
                t0 = time.monotonic()
                created = await stack.create_track(auth, f"seq {i}", args.duration_s)
                ended = await _until_terminal(stack, auth, [created["job_id"]], 60, 0.005)
                sequential_ms.append(1000 * (ended[created["job_id"]] - t0))
                sequential_ids.append(created["workflow_id"])
                # One track at a time: its mastering (after COMPLETE) ends before the next.
                await _until_mastered(stack, [created["job_id"]], 60, 0.005)
            cpu_before_burst = sum(tree_cpu_seconds(w.pid) for w in (worker, *extra))
            server = _temporal_server_pid(stack.settings.temporal_address)
            server_before = cpu_seconds(server)
            # This process runs the API (in-process) and the provider fake.
            here_before = time.process_time()
            gate = asyncio.Semaphore(args.create_concurrency)
            posted: dict[str, float] = {}

            async def create(i: int) -> dict[str, Any]:
                async with gate:
                    started = time.monotonic()
                    created = await stack.create_track(auth, f"burst {i}", args.duration_s)
                    posted[created["job_id"]] = started
                    return created

            b0 = time.monotonic()
            burst = await asyncio.gather(*(create(i) for i in range(args.burst)))
            ended = await _until_terminal(
                stack, auth, [t["job_id"] for t in burst], args.timeout_s, 0.1
            )
            burst_s = max(ended.values()) - b0
            # What reaching COMPLETE cost, before most of the mastering ran.
            complete_cpu = sum(tree_cpu_seconds(w.pid) for w in (worker, *extra)) - cpu_before_burst
            complete_server_cpu = cpu_seconds(server) - server_before
            complete_here_cpu = time.process_time() - here_before
            # Mastering follows COMPLETE, off the critical path; the CPU figures include it.
            await _until_mastered(stack, [t["job_id"] for t in burst], args.timeout_s, 0.1)
            mastered_s = time.monotonic() - b0
            burst_cpu = sum(tree_cpu_seconds(w.pid) for w in (worker, *extra)) - cpu_before_burst
            server_cpu = cpu_seconds(server) - server_before
            here_cpu = time.process_time() - here_before
        finally:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
        activities = await _activity_times(stack, sequential_ids)
        timeline = await _timeline(stack, sequential_ids[-1])
        hwm = tree_status(worker.pid, "VmHWM")
        cpu = tree_cpu_seconds(worker.pid) - cpu_at_ready
        for each in (worker, *extra):
            await stack.workers.terminate(each)
    return {
        "sequential_ms": sequential_ms,
        "burst_s": burst_s,
        "mastered_s": mastered_s,
        "burst_p50_s": statistics.median(ended[j] - posted[j] for j in ended),
        "burst_cpu_s": burst_cpu,
        "server_cpu_s": server_cpu,
        "here_cpu_s": here_cpu,
        "complete_cpu_s": (complete_cpu, complete_server_cpu, complete_here_cpu),
        "rss_at_ready_mb": rss_at_ready / MB,
        "peak_rss_mb": max([hwm, *sampler.samples]) / MB,
        "cpu_s": cpu,
        "activities": activities,
        "timeline": timeline,
        "per_track_activities": sum(len(v) for v in activities.queued.values())
        / max(1, len(sequential_ids)),
    }


def _temporal_server_pid(address: str) -> int:
    """The dev server listening on `address` (host:port), found by its command line."""
    port = address.rsplit(":", 1)[1]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if b"start-dev" in args and port.encode() in args:
                return int(cmdline.parent.name)
    raise RuntimeError(f"no Temporal dev server process on port {port}")


async def _timeline(stack: BenchStack, workflow_id: str) -> list[str]:
    """One sequential track's history: each event's offset from the start, in ms."""
    history = await stack.temporal.get_workflow_handle(workflow_id).fetch_history()
    start = history.events[0].event_time.ToDatetime()
    lines = []
    for event in history.events:
        offset = (event.event_time.ToDatetime() - start).total_seconds() * 1000
        kind = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
        name = ""
        if event.HasField("activity_task_scheduled_event_attributes"):
            name = event.activity_task_scheduled_event_attributes.activity_type.name
        lines.append(f"{offset:8.1f} ms  {kind} {name}".rstrip())
    return lines


def _target(label: str, value: str, target: str, ok: bool) -> None:
    print(f"{label:<40}{value:<22}{target:<30}{'PASS' if ok else 'FAIL'}")


async def run(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    load_at_start = os.getloadavg()
    fake = ReplicateFake(key=REPLICATE_TOKEN)
    # Predictions that have succeeded by the first poll.
    total = 1 + 2 * (args.sequential + args.burst)
    fake.script(jobs=[Job(running_polls=0)] * total)
    fake.start()
    try:
        ours = await measure_ours(args, fake)
        baseline = None
        if args.baseline:
            from bench.celery_baseline import run_baseline

            with tempfile.TemporaryDirectory(prefix="sf-baseline-") as tmp:
                baseline = await asyncio.to_thread(
                    run_baseline,
                    fake.url,
                    REPLICATE_TOKEN,
                    sequential=args.sequential,
                    burst=args.burst,
                    processes=args.baseline_processes,
                    workdir=Path(tmp),
                )
    finally:
        fake.stop()

    seq = ours["sequential_ms"]
    p50, p95 = statistics.median(seq), _percentile(seq, 0.95)
    per_s = args.burst / ours["burst_s"]
    print(machine_load(load_at_start))
    print(
        f"instant Replicate fake, {args.duration_s} s tracks; {args.workers} worker(s); "
        f"{'Postgres + S3' if args.postgres_s3 else 'SQLite + local files'}; "
        f"{args.sequential} sequential tracks, then a burst of {args.burst}"
    )
    print()
    print(f"{'':<40}{'SoundFoundry':<22}{'target':<30}")
    _target(
        "sequential POST -> COMPLETE p50",
        f"{p50:.0f} ms (p95 {p95:.0f})",
        f"<= {SEQUENTIAL_P50_TARGET_MS:g} ms",
        p50 <= SEQUENTIAL_P50_TARGET_MS,
    )
    _target(
        f"burst of {args.burst}: sustained",
        f"{per_s:.1f} tracks/s",
        f">= {BURST_TARGET_PER_S:g} tracks/s",
        per_s >= BURST_TARGET_PER_S,
    )
    print(f"{'  burst POST -> COMPLETE p50':<40}{ours['burst_p50_s']:.1f} s")
    print(
        f"{'  all mastered (FLAC + MP3)':<40}{ours['mastered_s']:.1f} s after the first POST "
        f"({args.burst / ours['mastered_s']:.1f} tracks/s)"
    )
    # CPU per burst track: until the last COMPLETE, then in all (mastering included).
    to_complete = ours["complete_cpu_s"]
    in_all = (ours["burst_cpu_s"], ours["server_cpu_s"], ours["here_cpu_s"])
    labels = (
        "  workers CPU per burst track",
        "  Temporal server CPU per burst track",
        "  API + provider fake CPU per track",
    )
    print(f"{'CPU per burst track':<40}{'to COMPLETE':<22}in all (mastering included)")
    for label, before, after in zip(labels, to_complete, in_all, strict=True):
        print(
            f"{label:<40}{1000 * before / args.burst:.0f} ms{'':<17}"
            f"{1000 * after / args.burst:.0f} ms"
        )
    _target(
        "worker peak RSS",
        f"{ours['peak_rss_mb']:.0f} MB",
        f"<= {RSS_TARGET_MB:g} MB",
        ours["peak_rss_mb"] <= RSS_TARGET_MB,
    )
    print(f"{'  at ready':<40}{ours['rss_at_ready_mb']:.0f} MB")
    ok = (
        p50 <= SEQUENTIAL_P50_TARGET_MS
        and per_s >= BURST_TARGET_PER_S
        and ours["peak_rss_mb"] <= RSS_TARGET_MB
    )
    if baseline is not None:
        base_p50 = statistics.median(baseline.sequential_ms)
        base_per_s = baseline.burst_tracks_per_s
        share = per_s / base_per_s
        print()
        print(
            f"baseline: Celery + Redis, {args.baseline_processes} worker process(es), "
            "same fake, same work"
        )
        print(f"{'sequential p50':<40}{base_p50:.0f} ms   ours {p50 / base_p50:.1f} x")
        print(
            f"{'burst sustained':<40}{base_per_s:.1f} tracks/s   ours {share:.2f} x "
            f"(target >= {BASELINE_SHARE_TARGET})"
        )
        print(
            f"{'burst POST -> COMPLETE p50':<40}{baseline.burst_p50_s:.1f} s   ours "
            f"{ours['burst_p50_s'] / baseline.burst_p50_s:.1f} x"
        )
        print(
            f"{'worker peak RSS':<40}{baseline.worker_peak_rss_mb:.0f} MB   ours "
            f"{ours['peak_rss_mb'] / baseline.worker_peak_rss_mb:.1f} x"
        )
        ok = ok and share >= BASELINE_SHARE_TARGET
    activities = ours["activities"]
    print()
    print(
        f"sequential tracks: {ours['per_track_activities']:.1f} activities per track; "
        "per activity type: queued (scheduled -> started), run (started -> closed)"
    )
    for name, queued in sorted(activities.queued.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:<22}{_spread(queued):<34}{_spread(activities.ran.get(name, []))}")
    if args.timeline:
        print()
        print("the last sequential track's history:")
        for line in ours["timeline"]:
            print(f"  {line}")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--duration-s", type=int, default=5)
    parser.add_argument("--create-concurrency", type=int, default=20)
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--postgres-s3", action="store_true", help="Postgres + versitygw instead of SQLite + files"
    )
    parser.add_argument("--baseline", action="store_true", help="also run Celery + Redis")
    parser.add_argument("--baseline-processes", type=int, default=1)
    parser.add_argument("--timeline", action="store_true", help="print one track's history")
    parser.add_argument(
        "--topology",
        action="store_true",
        help="the burst on the production topology and on the dev server (bench.topology)",
    )
    args = parser.parse_args()
    if args.topology:
        from bench import topology

        sys.exit(asyncio.run(topology.run(args)))
    if args.sequential < 1 or args.burst < 1 or args.workers < 1:
        parser.error("need --sequential, --burst and --workers >= 1")
    # Said before the minutes SoundFoundry's own run takes, not after them.
    if args.baseline and shutil.which("redis-server") is None:
        parser.error("--baseline needs redis-server on PATH (apt-get install redis-server)")
    if args.baseline and importlib.util.find_spec("celery") is None:
        parser.error("--baseline needs Celery: uv sync ... --extra bench (see README)")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
