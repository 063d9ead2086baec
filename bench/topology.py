"""The same burst on the production topology and on the dev server, in one run.

Both runs start tests/cluster.py's topology: PostgreSQL (the app's database), versitygw,
2 `soundfoundry api` and 2 `soundfoundry worker` processes, the Replicate fake with
predictions that succeed at once. They differ only in Temporal:

    cluster   temporal-server on PostgreSQL (persistence + SQL visibility), mTLS on the
              frontend, frontend and history+matching+worker as two processes
    dev       `temporal server start-dev` (SQLite file), as `soundfoundry dev` runs it

Per run: tracks/s (first POST -> last COMPLETE), POST -> COMPLETE p50/p95, CPU per track
of each process group until the last COMPLETE, and PostgreSQL connections at peak (all
databases, and Temporal's alone).

    .venv/bin/python -m bench.pipeline --topology [--burst 60] [--duration-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from bench.faults import REPLICATE_TOKEN, machine_load
from bench.procs import tree_cpu_seconds
from core.db import create_engine, session_factory
from core.models import Plan
from domain.users import create_user
from tests.cluster import DevTemporal, Topology
from tests.fakes import Job
from tests.fakes.replicate_server import ReplicateFake


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Connections:
    """Peak PostgreSQL connections, sampled from pg_stat_activity."""

    peak_all: int = 0
    peak_temporal: int = 0
    samples: int = 0

    async def sample(self, dsn: str, every_s: float = 0.2) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT datname, count(*) AS n FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' GROUP BY datname"
                )
                counts = {row["datname"]: row["n"] for row in rows}
                # Less our own sampling connection.
                self.peak_all = max(self.peak_all, sum(counts.values()) - 1)
                temporal = counts.get("temporal", 0) + counts.get("temporal_visibility", 0)
                self.peak_temporal = max(self.peak_temporal, temporal)
                self.samples += 1
                await asyncio.sleep(every_s)
        finally:
            await conn.close()


@dataclass
class Result:
    label: str
    burst: int
    tracks_per_s: float
    p50_s: float
    p95_s: float
    cpu_ms_per_track: dict[str, float] = field(default_factory=dict)
    connections: Connections = field(default_factory=Connections)


def _process_groups(topology: Topology) -> dict[str, list[int]]:
    assert topology.temporal is not None and topology.postgres is not None
    temporal = topology.temporal
    groups: dict[str, list[int]] = {
        f"API x{len(topology.apis)}": [p.pid for p in topology.apis],
        f"workers x{len(topology.workers)}": [p.pid for p in topology.workers],
    }
    if isinstance(temporal, DevTemporal):
        assert temporal.frontend is not None
        groups["Temporal dev server"] = [temporal.frontend.pid]
    else:
        assert temporal.frontend is not None and temporal.backend is not None
        groups["Temporal frontend"] = [temporal.frontend.pid]
        groups["Temporal history+matching"] = [temporal.backend.pid]
    assert topology.postgres.tmpdir is not None
    pidfile = Path(topology.postgres.tmpdir) / "data" / "postmaster.pid"
    groups["PostgreSQL"] = [int(pidfile.read_text().splitlines()[0])]
    return groups


def _cpu(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(tree_cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}


async def _completed(dsn: str, job_ids: list[str], timeout_s: float) -> dict[str, float]:
    """When each job was first seen COMPLETE in the database (monotonic)."""
    conn = await asyncpg.connect(dsn)
    ended: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(ended) < len(job_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(job_ids) - len(ended)} tracks not done in {timeout_s} s")
            rows = await conn.fetch(
                "SELECT id::text AS id, status::text AS status FROM jobs"
                " WHERE id = ANY($1::uuid[])",
                [j for j in job_ids if j not in ended],
            )
            now = time.monotonic()
            for row in rows:
                if row["status"] == "COMPLETE":
                    ended[row["id"]] = now
                elif row["status"] in ("FAILED", "CANCELLED", "TERMINATED"):
                    raise RuntimeError(f"job {row['id']} ended {row['status']}")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return ended


async def measure(label: str, fake: ReplicateFake, args: argparse.Namespace, dev: bool) -> Result:
    env = {
        "MUSIC_PROVIDERS": "replicate",
        "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
        "REPLICATE_BASE_URL": fake.url,
        "RATE_LIMIT_CREATE_TRACK_PRO": str(10 * args.burst + 20),
    }
    topology = Topology(env=env, dev_server=dev)
    await asyncio.to_thread(topology.start)
    try:
        assert topology.postgres is not None
        app_dsn = topology.postgres.dsn("soundfoundry")
        engine = create_engine(topology.database_url)
        _, token = await create_user(
            session_factory(engine), "bench", 10 * (args.burst + 10), Plan.PRO
        )
        await engine.dispose()
        auth = {"Authorization": f"Bearer {token}"}
        urls = topology.api_urls
        async with httpx.AsyncClient(timeout=60, headers=auth) as http:

            async def create(n: int) -> str:
                response = await http.post(
                    f"{urls[n % len(urls)]}/api/tracks",
                    json={"prompt": f"bench {n}", "duration_s": args.duration_s},
                )
                response.raise_for_status()
                job_id: str = response.json()["job_id"]
                return job_id

            # Warm-up, one per API: the first track pays for imports and caches.
            warm = [await create(n) for n in range(len(urls))]
            await _completed(app_dsn, warm, 120)
            await asyncio.sleep(2)  # let the warm-up's mastering pass
            groups = _process_groups(topology)
            connections = Connections()
            sampling = asyncio.create_task(connections.sample(topology.postgres.dsn("postgres")))
            cpu_before = _cpu(groups)
            gate = asyncio.Semaphore(args.create_concurrency)
            posted: dict[str, float] = {}

            async def gated(n: int) -> str:
                async with gate:
                    started = time.monotonic()
                    job_id = await create(n)
                    posted[job_id] = started
                    return job_id

            b0 = time.monotonic()
            job_ids = await asyncio.gather(*(gated(n) for n in range(args.burst)))
            ended = await _completed(app_dsn, list(job_ids), args.timeout_s)
            burst_s = max(ended.values()) - b0
            cpu_after = _cpu(groups)
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        took = [ended[j] - posted[j] for j in job_ids]
        return Result(
            label=label,
            burst=args.burst,
            tracks_per_s=args.burst / burst_s,
            p50_s=statistics.median(took),
            p95_s=_percentile(took, 0.95),
            cpu_ms_per_track={
                name: 1000 * (cpu_after[name] - cpu_before[name]) / args.burst for name in groups
            },
            connections=connections,
        )
    finally:
        await asyncio.to_thread(topology.stop)


def report(results: list[Result], load_at_start: tuple[float, float, float]) -> None:
    print(machine_load(load_at_start))
    print(
        f"burst of {results[0].burst} tracks over 2 APIs, 2 workers; instant Replicate fake; "
        "app on PostgreSQL + versitygw in both runs"
    )
    width = 30
    print(f"\n{'':<{width}}" + "".join(f"{r.label:<34}" for r in results))
    rows: list[tuple[str, list[str]]] = [
        ("tracks/s", [f"{r.tracks_per_s:.1f}" for r in results]),
        ("POST -> COMPLETE p50 / p95", [f"{r.p50_s:.2f} s / {r.p95_s:.2f} s" for r in results]),
        (
            "Postgres connections at peak",
            [
                f"{r.connections.peak_all} (Temporal's {r.connections.peak_temporal})"
                for r in results
            ],
        ),
    ]
    for name, values in rows:
        print(f"{name:<{width}}" + "".join(f"{v:<34}" for v in values))
    print("CPU per track (to COMPLETE)")
    names = list(dict.fromkeys(n for r in results for n in r.cpu_ms_per_track))
    for name in names:
        values = [
            f"{r.cpu_ms_per_track[name]:.0f} ms" if name in r.cpu_ms_per_track else "-"
            for r in results
        ]
        print(f"  {name:<{width - 2}}" + "".join(f"{v:<34}" for v in values))
    totals = [f"{sum(r.cpu_ms_per_track.values()):.0f} ms" for r in results]
    print(f"  {'all processes':<{width - 2}}" + "".join(f"{v:<34}" for v in totals))


async def run(args: argparse.Namespace) -> int:
    load_at_start = os.getloadavg()
    fake = ReplicateFake(key=REPLICATE_TOKEN)
    # Predictions that have succeeded by the first poll; enough for both runs.
    fake.script(jobs=[Job(running_polls=0)] * (2 * (args.burst + 10)))
    fake.start()
    try:
        results = [
            await measure("dev server (SQLite)", fake, args, dev=True),
            await measure("cluster (Postgres, mTLS)", fake, args, dev=False),
        ]
    finally:
        fake.stop()
    report(results, load_at_start)
    return 0
