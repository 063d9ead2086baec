"""Capacity while waiting on a provider: hundreds of tracks in flight on one worker.

The issue: "Hundreds of tracks in flight per worker: waiting on a provider must not hold
a worker slot". N tracks are created at once against the Replicate fake, whose
predictions render for R seconds, with ONE `worker.py` process on default settings
(WORKER_MAX_CONCURRENT_ACTIVITIES 8) except the poll interval and fast retries. The rest
of the stack is real and on loopback: the Temporal dev server, the API in-process,
SQLite and local files (bench.faults.bench_stack).

Printed next to the issue's targets (PASS/FAIL):

    all N submitted within 10 s       first create -> last prediction created at the fake
    all complete within R + 10 s      first create -> every job COMPLETE
    worker RSS <= 300 MB              the worker's VmHWM (and VmRSS sampled every 0.5 s)
    polls per track <= R / P + 2      the fake's GET /v1/predictions/{id} calls / N

    .venv/bin/python -m bench.inflight [--quick] [--tracks 200] [--render-s 60]
                                       [--poll-interval-s 2] [--webhooks]

--quick is N=40, R=15. --webhooks turns PROVIDER_WEBHOOKS_ENABLED on: the fake delivers a
signed webhook to the API when each prediction ends, and the track's polls thin out to
the safety net (PROVIDER_WEBHOOK_POLL_INTERVAL_S). Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.faults import REPLICATE_TOKEN, BenchStack, bench_stack, machine_load
from bench.procs import tree_cpu_seconds, tree_status
from core.contracts import JobStatus
from core.logging import configure_logging
from tests.fakes import Job
from tests.fakes.replicate_server import ReplicateFake

MB = 1024 * 1024
SUBMIT_TARGET_S = 10.0
COMPLETE_MARGIN_S = 10.0
RSS_TARGET_MB = 300.0


def _cpu_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds per thread kind: the main thread runs the event loop; the Temporal
    core's Rust threads have their own names; other Python threads share the program's."""
    per: dict[str, float] = collections.defaultdict(float)
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread may end meanwhile
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            kind = "main thread" if task.name == str(pid) else name
            per[kind] += (int(fields[11]) + int(fields[12])) / tick
    return per


@dataclass
class RssSampler:
    pid: int
    every_s: float = 0.5
    samples: list[int] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(OSError):  # the worker may be gone
                self.samples.append(tree_status(self.pid, "VmRSS"))
            await asyncio.sleep(self.every_s)


CLOSING = frozenset(
    f"activity_task_{kind}_event_attributes" for kind in ("completed", "failed", "timed_out")
)


@dataclass
class ActivityTimes:
    """Per activity type: waiting for a worker slot, running in one, and retries."""

    queued: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    ran: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    retries: collections.Counter[str] = field(default_factory=collections.Counter)
    # Per workflow id, wall-clock (epoch s) milestones of the wait's end: "signal" (the
    # first webhook), "<activity> scheduled|started|closed" for the first collect_audio.
    milestones: dict[str, dict[str, float]] = field(default_factory=dict)


async def _activity_times(stack: BenchStack, workflow_ids: list[str]) -> ActivityTimes:
    """Scheduled -> started (the queue) and started -> closed (the run), from history.

    Only the attempt that closed an activity has a started event; earlier attempts (none
    expected here, counted as retries) are folded into its queue time.
    """
    times = ActivityTimes()
    for workflow_id in workflow_ids:
        history = await stack.temporal.get_workflow_handle(workflow_id).fetch_history()
        scheduled: dict[int, tuple[str, datetime]] = {}
        started: dict[int, tuple[str, datetime]] = {}
        marks = times.milestones.setdefault(workflow_id, {})
        for event in history.events:
            at = event.event_time.ToDatetime(tzinfo=UTC)
            kind = event.WhichOneof("attributes")
            if kind == "workflow_execution_signaled_event_attributes":
                marks.setdefault("signal", at.timestamp())
            elif kind == "activity_task_scheduled_event_attributes":
                name = event.activity_task_scheduled_event_attributes.activity_type.name
                scheduled[event.event_id] = (name, at)
                marks.setdefault(f"{name} scheduled", at.timestamp())
            elif kind == "activity_task_started_event_attributes":
                attrs = event.activity_task_started_event_attributes
                name, queued_at = scheduled[attrs.scheduled_event_id]
                times.queued[name].append((at - queued_at).total_seconds())
                times.retries[name] += attrs.attempt - 1
                started[event.event_id] = (name, at)
                marks.setdefault(f"{name} started", at.timestamp())
            elif kind in CLOSING:
                ref = getattr(event, kind).started_event_id
                if ref in started:
                    name, began = started[ref]
                    times.ran[name].append((at - began).total_seconds())
                    marks.setdefault(f"{name} closed", at.timestamp())
    return times


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):5.2f} s, max {max(values):6.2f} s"


def _target(label: str, figure: str, target: str, ok: bool) -> None:
    print(f"{label:<32}{figure:<24}{target:<28}{'PASS' if ok else 'FAIL'}")


async def run(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    n, render_s, interval_s = args.tracks, args.render_s, args.poll_interval_s
    wall_started, load_at_start = time.monotonic(), os.getloadavg()
    with ReplicateFake(key=REPLICATE_TOKEN) as fake:
        # Every prediction renders for R s; one "running" answer, then time decides.
        fake.default_job = Job(running_s=render_s, running_polls=1)
        async with bench_stack(
            fake,
            webhooks=args.webhooks,
            poll_interval_s=interval_s,
            retry_initial_interval_s=0.2,
            retry_max_interval_s=2,
            # All N creates fall in one rate-limit window.
            rate_limit_create_track_pro=n + 10,
        ) as stack:
            _, auth = await stack.user(credits=10 * n)
            worker = await stack.workers.start_ready()
            rss_at_ready = tree_status(worker.pid, "VmRSS")
            cpu_at_ready = tree_cpu_seconds(worker.pid)
            sampler = RssSampler(worker.pid)
            sampling = asyncio.create_task(sampler.run())
            try:
                gate = asyncio.Semaphore(args.create_concurrency)

                async def create(i: int) -> dict[str, Any]:
                    async with gate:
                        return await stack.create_track(
                            auth, f"inflight track {i}", args.duration_s
                        )

                t0 = time.monotonic()
                tracks = await asyncio.gather(*(create(i) for i in range(n)))
                creates_took = time.monotonic() - t0
                job_ids = [t["job_id"] for t in tracks]
                ended_at: dict[str, float] = {}
                statuses: dict[str, JobStatus] = {}
                peak_running = peak_rendering = 0
                deadline = t0 + args.timeout_s
                while len(ended_at) < n and time.monotonic() < deadline:
                    statuses = await stack.statuses(job_ids)
                    now = time.monotonic()
                    for job_id, status in statuses.items():
                        if status.is_terminal:
                            ended_at.setdefault(job_id, now)
                    rendering = sum(s is JobStatus.RENDERING for s in statuses.values())
                    peak_rendering = max(peak_rendering, rendering)
                    # list(): one atomic copy, the fake's thread adds jobs meanwhile.
                    running = sum(not job.done for job in list(fake.jobs.values()))
                    peak_running = max(peak_running, running)
                    await asyncio.sleep(0.5)
                statuses = await stack.statuses(job_ids)
                watched_s = time.monotonic() - t0
            finally:
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            activities = await _activity_times(stack, [t["workflow_id"] for t in tracks])
            hwm = tree_status(worker.pid, "VmHWM")
            cpu = tree_cpu_seconds(worker.pid) - cpu_at_ready
            by_thread = _cpu_by_thread(worker.pid)
            worker_alive = worker.poll() is None
            await stack.workers.terminate(worker)

    submitted = sorted(job.submitted_at for job in fake.jobs.values())
    complete = sum(s is JobStatus.COMPLETE for s in statuses.values())
    counts = collections.Counter(s.value for s in statuses.values())
    others = sorted(f"{name} {c}" for name, c in counts.items() if name != "COMPLETE")
    all_done = complete == n
    finish = [ended_at[j] - t0 for j in job_ids if j in ended_at]
    last_done = max(finish) if all_done else None
    polls_per_track = fake.polls / n
    poll_limit = render_s / interval_s + 2
    peak_rss = max([hwm, *sampler.samples])
    busy_s = last_done if last_done is not None else watched_s

    # Exactly one prediction per track: more would be a second payment, not a submit.
    submit_ok = len(submitted) == n and submitted[-1] - t0 <= SUBMIT_TARGET_S
    complete_ok = last_done is not None and last_done <= render_s + COMPLETE_MARGIN_S
    rss_ok = peak_rss <= RSS_TARGET_MB * MB
    polls_ok = polls_per_track <= poll_limit

    print(machine_load(load_at_start))
    print(
        f"tracks: {n} x {args.duration_s} s at once ({args.create_concurrency} creates at a "
        f"time), predictions render R = {render_s:g} s, poll interval {interval_s:g} s"
    )
    print(
        "one worker, WORKER_MAX_CONCURRENT_ACTIVITIES "
        f"{stack.settings.worker_max_concurrent_activities}, "
        f"WORKER_MAX_CONCURRENT_WORKFLOW_TASKS "
        f"{stack.settings.worker_max_concurrent_workflow_tasks}"
    )
    if args.webhooks:
        print(
            "provider webhooks on: polls every "
            f"{max(interval_s, stack.settings.provider_webhook_poll_interval_s):g} s "
            f"while one is expected; {fake.webhooks_sent} delivered"
        )
    print()
    print(f"creates accepted (API)          {len(tracks)} in {creates_took:.1f} s")
    if submitted:
        print(
            f"predictions created at fake     {len(submitted)} for {n} tracks; first -> last "
            f"{submitted[-1] - submitted[0]:.1f} s; first create -> first "
            f"{submitted[0] - t0:.1f} s"
        )
        last_submit = f"{submitted[-1] - t0:.1f} s"
    else:
        last_submit = "none submitted"
    _target(
        "  first create -> last submit",
        last_submit,
        f"target <= {SUBMIT_TARGET_S:g} s",
        submit_ok,
    )
    print(f"peak predictions rendering      {peak_running} at once at the fake")
    print(f"peak jobs RENDERING             {peak_rendering}")
    print(
        f"tracks COMPLETE                 {complete} / {n}"
        + (f" (others: {', '.join(others)})" if others else "")
    )
    if finish:
        print(
            f"  first create -> done          median {statistics.median(finish):.1f} s, "
            f"last {max(finish):.1f} s ({max(finish) / render_s:.2f} x R)"
        )
    _target(
        "  first create -> all COMPLETE",
        "not all complete" if last_done is None else f"{last_done:.1f} s",
        f"target <= R + {COMPLETE_MARGIN_S:g} = {render_s + COMPLETE_MARGIN_S:g} s",
        complete_ok,
    )
    _target(
        "provider polls per track",
        f"{polls_per_track:.1f} ({fake.polls} calls)",
        f"target <= R/P + 2 = {poll_limit:.1f}",
        polls_ok,
    )
    _target(
        "worker peak RSS",
        f"{peak_rss / MB:.0f} MB",
        f"target <= {RSS_TARGET_MB:g} MB",
        rss_ok,
    )
    sampled = max(sampler.samples, default=0)
    print(
        f"  at ready {rss_at_ready / MB:.0f} MB, VmHWM {hwm / MB:.0f} MB, "
        f"max sampled VmRSS {sampled / MB:.0f} MB"
    )
    print(
        f"worker CPU                      {cpu:.1f} s over {busy_s:.1f} s "
        f"({100 * cpu / busy_s:.0f} % of one core; {os.cpu_count()} cores here)"
    )
    print(
        "  by thread (since start): "
        + ", ".join(
            f"{name} {sec:.1f} s"
            for name, sec in sorted(by_thread.items(), key=lambda kv: -kv[1])[:4]
        )
    )
    if not worker_alive:
        print("the worker DIED during the run")
    _where_the_time_went(tracks, fake, ended_at, activities, render_s)
    print()
    print(f"wall time {time.monotonic() - wall_started:.1f} s")
    return 0 if submit_ok and complete_ok and rss_ok and polls_ok and worker_alive else 1


def _where_the_time_went(
    tracks: list[dict[str, Any]],
    fake: ReplicateFake,
    ended_at: dict[str, float],
    activities: ActivityTimes,
    render_s: float,
) -> None:
    created = {str(job.input.get("prompt")): job.submitted_at for job in fake.jobs.values()}
    after_render = [
        ended_at[t["job_id"]] - (created[f"inflight track {i}"] + render_s)
        for i, t in enumerate(tracks)
        if t["job_id"] in ended_at and f"inflight track {i}" in created
    ]
    print()
    print(f"render end at the fake -> job ended    {_spread(after_render)}")
    _tail_phases(tracks, created, ended_at, activities, render_s)
    polls = activities.queued.get("poll_generation", [])
    print(
        f"poll_generation activities per track   {len(polls) / len(tracks):.1f} "
        "(the fake's other GETs are collect_audio reading the output URL)"
    )
    print(
        "activities          count retries  queued (scheduled -> started)"
        "     run (started -> closed)"
    )
    for name, queued in sorted(activities.queued.items(), key=lambda kv: -sum(kv[1])):
        ran = activities.ran.get(name, [])
        print(
            f"  {name:<18}{len(queued):>5} {activities.retries[name]:>7}  "
            f"{_spread(queued):<34}{_spread(ran)}"
        )


def _tail_phases(
    tracks: list[dict[str, Any]],
    created: dict[str, float],
    ended_at: dict[str, float],
    activities: ActivityTimes,
    render_s: float,
) -> None:
    """The same span in steps, per track, from its history: render end -> webhook signal
    (or the safety poll's collect) -> collect_audio scheduled -> started -> closed -> the
    job ended in the database (as the bench's 0.5 s status poll saw it)."""
    # The fake and the bench keep monotonic time; histories keep wall-clock time.
    to_wall = time.time() - time.monotonic()
    steps: dict[str, list[float]] = collections.defaultdict(list)
    for i, track in enumerate(tracks):
        marks = activities.milestones.get(track["workflow_id"], {})
        prompt = f"inflight track {i}"
        if prompt not in created or track["job_id"] not in ended_at:
            continue
        points = [
            ("render end", created[prompt] + render_s + to_wall),
            ("webhook signal", marks.get("signal")),
            ("collect scheduled", marks.get("collect_audio scheduled")),
            ("collect started", marks.get("collect_audio started")),
            ("collect closed", marks.get("collect_audio closed")),
            ("job ended", ended_at[track["job_id"]] + to_wall),
        ]
        known = [(name, at) for name, at in points if at is not None]
        for (before, began), (after, ended) in itertools.pairwise(known):
            steps[f"{before} -> {after}"].append(ended - began)
    for step, spans in steps.items():
        print(f"  {step:<36} {_spread(spans)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=40, R=15")
    parser.add_argument("--tracks", type=int, help="N (default 200; --quick 40)")
    parser.add_argument("--render-s", type=float, help="R (default 60; --quick 15)")
    parser.add_argument("--poll-interval-s", type=float, default=2.0, help="POLL_INTERVAL_S")
    parser.add_argument("--duration-s", type=int, default=5, help="track length asked for")
    parser.add_argument("--create-concurrency", type=int, default=20)
    parser.add_argument(
        "--webhooks", action="store_true", help="the fake tells the API when jobs end"
    )
    parser.add_argument(
        "--timeout-s", type=float, help="bound on the whole wait (default R + max(300, 2R))"
    )
    args = parser.parse_args()
    if args.tracks is None:
        args.tracks = 40 if args.quick else 200
    if args.render_s is None:
        args.render_s = 15.0 if args.quick else 60.0
    if args.timeout_s is None:
        args.timeout_s = args.render_s + max(300.0, 2 * args.render_s)
    if args.tracks < 1 or args.render_s <= 0 or args.poll_interval_s <= 0:
        parser.error("need --tracks >= 1, --render-s > 0 and --poll-interval-s > 0")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
