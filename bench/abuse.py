"""Another user's latency on GET /api/me during a render-bomb storm, against a baseline.

Runs the real stack on loopback (Temporal dev server, a worker, the API in-process, SQLite
and local files, the synth provider). A quiet user reads GET /api/me back to back, first
alone (baseline), then while attackers, each with a finished track, save covers as fast
as they can from many parallel loops: nested-<use> bombs (refused by the sanitizer's
fan-out budget), SVGs that pass it but are expensive to draw (killed at the render CPU
limit) and re-rolls. Attackers' rate limits are raised so that only the render bounds
stand between them and the CPU. Prints both p99s and their ratio.

    .venv/bin/python -m bench.abuse [--seconds 15] [--attackers 3] [--loops 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from bench.in_process import in_process_stack
from core.logging import configure_logging
from core.settings import Settings
from soundfoundry.devstack import DEV_SERVER_TUNING
from tests.services import TemporalDevServer

SVG_OPEN = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">'


def _use_bomb(levels: int, leaf: str) -> str:
    groups = "".join(
        f'<g id="l{level}">' + f'<use href="#l{level - 1}"/>' * 10 + "</g>"
        for level in range(1, levels + 1)
    )
    return f'{SVG_OPEN}<defs>{leaf}{groups}</defs><use href="#l{levels}"/></svg>'


BOMB = _use_bomb(5, '<rect id="l0" width="100" height="100"/>')
EXPENSIVE = _use_bomb(
    3,
    '<filter id="f"><feGaussianBlur stdDeviation="30"/></filter>'
    '<rect id="l0" width="100" height="100" fill-opacity="0.02" filter="url(#f)"/>',
)


async def _finished_track(http: httpx.AsyncClient, auth: dict[str, str]) -> str:
    body = {"prompt": "bench", "duration_s": 5}
    created = (await http.post("/api/tracks", json=body, headers=auth)).json()
    while True:
        job = (await http.get(f"/api/jobs/{created['job_id']}", headers=auth)).json()
        if job["status"] == "COMPLETE":
            return str(created["track_id"])
        if job["status"] not in ("QUEUED", "RENDERING"):
            raise RuntimeError(f"bench track did not complete: {job}")
        await asyncio.sleep(0.1)


async def _read_me(
    http: httpx.AsyncClient, auth: dict[str, str], seconds: float
) -> tuple[list[float], int]:
    """GET /api/me back to back for `seconds`: latencies of answers, and failures."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        response = await http.get("/api/me", headers=auth)
        if response.status_code == 200:
            latencies.append(time.perf_counter() - start)
        else:
            failures += 1
        await asyncio.sleep(0.01)  # a client, not a spin loop
    return latencies, failures


async def _attack(
    http: httpx.AsyncClient,
    auth: dict[str, str],
    track_id: str,
    loop_index: int,
    stop: asyncio.Event,
    answers: Counter[str],
) -> None:
    kinds = ("bomb", "expensive", "reroll")
    turn = loop_index
    while not stop.is_set():
        kind = kinds[turn % len(kinds)]
        turn += 1
        if kind == "reroll":
            response = await http.post(
                f"/api/tracks/{track_id}/increment-visual-version", headers=auth
            )
        else:
            svg = BOMB if kind == "bomb" else EXPENSIVE
            response = await http.post(
                f"/api/tracks/{track_id}/cover", json={"svg": svg, "dark": False}, headers=auth
            )
        answers[f"{kind} {response.status_code}"] += 1
        if response.status_code == 429:
            await asyncio.sleep(0.05)  # a hostile client, but not a spin loop on refusals


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def main(seconds: float, attackers: int, loops: int) -> None:
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        async with TemporalDevServer(extra_args=DEV_SERVER_TUNING) as temporal:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                environment="test",
                secret_key="bench-secret-key-0123456789-abcdefghij",
                database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
                storage_local_dir=Path(tmp) / "objects",
                public_base_url="http://bench",
                temporal_address=temporal.target_host,
                task_queue=f"bench-{uuid.uuid4().hex[:8]}",
                music_providers=["synth"],
                poll_interval_s=0.1,
                # Only the render bounds and limits stand in the attackers' way.
                rate_limit_cover_save=100_000,
                rate_limit_cover_reroll=100_000,
                rate_limit_create_track_free=100,
            )
            async with in_process_stack(temporal.client, settings, timeout_s=120) as stack:
                http = stack.http
                victim = await stack.user("victim", 100)
                attacker_tracks: list[tuple[dict[str, str], str]] = []
                for index in range(attackers):
                    auth = await stack.user(f"attacker-{index}", 100)
                    attacker_tracks.append((auth, await _finished_track(http, auth)))
                await _read_me(http, victim, 1.0)  # warm-up
                baseline, baseline_failures = await _read_me(http, victim, seconds)

                stop = asyncio.Event()
                answers: Counter[str] = Counter()
                storm = [
                    asyncio.create_task(_attack(http, auth, track_id, i, stop, answers))
                    for auth, track_id in attacker_tracks
                    for i in range(loops)
                ]
                stormy, stormy_failures = await _read_me(http, victim, seconds)
                stop.set()
                await asyncio.gather(*storm)

    print(f"storm: {attackers} attackers x {loops} parallel loops, {seconds:g} s each phase")
    print(f"limits: render CPU {settings.cover_render_cpu_s} s, wall ", end="")
    print(
        f"{settings.cover_render_timeout_s:g} s, {settings.cover_render_max_per_user} per user, "
        f"{settings.cover_render_max_concurrent} at once"
    )
    print("attacker answers:", ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))
    print(
        f"baseline  GET /api/me  p99 {_p99(baseline) * 1000:8.1f} ms   "
        f"median {statistics.median(baseline) * 1000:7.1f} ms   n={len(baseline)} "
        f"failed={baseline_failures}"
    )
    print(
        f"storm     GET /api/me  p99 {_p99(stormy) * 1000:8.1f} ms   "
        f"median {statistics.median(stormy) * 1000:7.1f} ms   n={len(stormy)} "
        f"failed={stormy_failures}"
    )
    print(f"ratio     storm / baseline (p99)   {_p99(stormy) / _p99(baseline):.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--attackers", type=int, default=3)
    parser.add_argument("--loops", type=int, default=8)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.attackers, arguments.loops))
