"""How long from a fal 403 to the Replicate submit, against a same-run baseline.

Runs the real stack on loopback (Temporal dev server, a worker, the API in-process,
SQLite and local files) with the fal and Replicate fakes from tests/fakes, and reads the
job log's timestamps:

    fallback  = fal `submitted.failed` (403)  ->  replicate `submitted`
    baseline  = fal `submitted` (200)          ->  the next step (`audio_ready` poll start)
                i.e. one activity hand-off on the happy path

    .venv/bin/python -m bench.fallback_latency [--runs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.in_process import in_process_stack
from core.logging import configure_logging
from core.settings import Settings
from soundfoundry.devstack import DEV_SERVER_TUNING
from tests.fakes import Fail
from tests.fakes.fal_server import FalFake
from tests.fakes.replicate_server import ReplicateFake
from tests.services import TemporalDevServer

FAL_KEY = "bench-fal-key-0123456789"
REPLICATE_TOKEN = "r8_bench-token-0123456789"


def _ts(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["ts"])


async def _run_one(http: httpx.AsyncClient, auth: dict[str, str]) -> list[dict[str, Any]]:
    created = (
        await http.post("/api/tracks", json={"prompt": "bench", "duration_s": 5}, headers=auth)
    ).json()
    while True:
        job = (await http.get(f"/api/jobs/{created['job_id']}", headers=auth)).json()
        if job["status"] not in ("QUEUED", "RENDERING"):
            break
        await asyncio.sleep(0.05)
    logs: list[dict[str, Any]] = (
        await http.get(f"/api/jobs/{created['job_id']}/logs", headers=auth)
    ).json()
    return logs


def _gap(logs: list[dict[str, Any]], first: tuple[str, str], then: tuple[str, str]) -> float:
    start = next(e for e in logs if (e["event"], e["provider"]) == first)
    end = next(e for e in logs if (e["event"], e["provider"]) == then)
    return (_ts(end) - _ts(start)).total_seconds()


async def main(runs: int) -> None:
    configure_logging("WARNING")
    with (
        tempfile.TemporaryDirectory() as tmp,
        FalFake(key=FAL_KEY) as fal,
        ReplicateFake(key=REPLICATE_TOKEN) as replicate,
    ):
        async with TemporalDevServer(extra_args=DEV_SERVER_TUNING) as temporal:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
                storage_local_dir=Path(tmp) / "objects",
                temporal_address=temporal.target_host,
                task_queue=f"bench-{uuid.uuid4().hex[:8]}",
                music_providers=["fal", "replicate"],
                fal_key=FAL_KEY,
                replicate_api_token=REPLICATE_TOKEN,
                fal_queue_url=fal.url,
                replicate_base_url=replicate.url,
                provider_download_allowed_hosts=["127.0.0.1"],  # the fakes' audio
                poll_interval_s=0.05,
            )
            async with in_process_stack(temporal.client, settings) as stack:
                http = stack.http
                auth = await stack.user("bench", 10_000)
                await _run_one(http, auth)  # warm-up: first worker start, imports
                baseline, fallback = [], []
                for _ in range(runs):
                    logs = await _run_one(http, auth)
                    baseline.append(_gap(logs, ("submitted", "fal"), ("audio_ready", "fal")))
                    fal.script(submit=[Fail(403, detail="key lacks scope")])
                    logs = await _run_one(http, auth)
                    fallback.append(
                        _gap(logs, ("submitted.failed", "fal"), ("submitted", "replicate"))
                    )

    def describe(values: list[float]) -> str:
        return (
            f"median {statistics.median(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms"
        )

    print(f"runs: {runs}")
    print(f"baseline  fal submit -> fal job ready      {describe(baseline)}")
    print(f"fallback  fal 403    -> replicate submit   {describe(fallback)}")
    print(
        "ratio     fallback / baseline (median)      "
        f"{statistics.median(fallback) / statistics.median(baseline):.2f}x"
    )
    print(
        f"target    fal 403 -> replicate submit < 1000 ms: "
        f"{'met' if max(fallback) < 1.0 else 'MISSED'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    asyncio.run(main(parser.parse_args().runs))
