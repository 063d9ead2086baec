"""Another user's latency on GET /api/me while attackers try each attack, against a baseline.

Runs the real stack on loopback (Temporal dev server, a worker, the API in-process, SQLite
and local files, the synth provider). A quiet user reads GET /api/me back to back, first
alone (baseline), then during each attack in turn, from many parallel loops:

* render: cover saves of nested-<use> bombs (refused by the sanitizer's fan-out budget),
  of SVGs that pass it but are expensive to draw (killed at the render CPU limit), and
  re-rolls;
* sanitizer: cover saves of the costliest SVGs at the 1 MB limit (many tiny elements,
  checked in the sandbox's child) and of nested <style>s (the issue-24 shape);
* preview: anonymous stampedes on share pages whose PNG preview is not drawn yet (each
  round forgets the previews again, as a fresh share would be);
* wav: WAV downloads of the attackers' tracks, over and over.

Attackers' rate limits are raised so that only the bounds under test stand between them
and the CPU. Prints, per phase, the victim's p99 and worst latency and the attackers'
answers.

    .venv/bin/python -m bench.abuse [--seconds 15] [--attackers 3] [--loops 8]
        [--cases render,sanitizer,preview,wav]
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
from urllib.parse import urlsplit

import httpx
from sqlalchemy import update
from sqlmodel import col

from bench.in_process import InProcessStack, in_process_stack
from core.db import transaction
from core.logging import configure_logging
from core.models import Track
from core.settings import Settings
from engines.render_sandbox import sandbox_for
from engines.svg_sanitize import DEFAULT_MAX_BYTES
from soundfoundry.devstack import DEV_SERVER_TUNING
from tests.covers_support import COSTLY_SVGS
from tests.services import TemporalDevServer

CASES = ("render", "sanitizer", "preview", "wav")

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


SANITIZER_WORST = COSTLY_SVGS["tiny elements"](DEFAULT_MAX_BYTES)
NESTED_STYLES = COSTLY_SVGS["nested styles"](DEFAULT_MAX_BYTES)


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
    stack: InProcessStack,
    case: str,
    auth: dict[str, str],
    track: dict[str, str],
    loop_index: int,
    stop: asyncio.Event,
    answers: Counter[str],
) -> None:
    http = stack.http
    turn = loop_index
    while not stop.is_set():
        turn += 1
        if case == "render":
            kind = ("bomb", "expensive", "reroll")[turn % 3]
            if kind == "reroll":
                response = await http.post(
                    f"/api/tracks/{track['id']}/increment-visual-version", headers=auth
                )
            else:
                svg = BOMB if kind == "bomb" else EXPENSIVE
                response = await http.post(
                    f"/api/tracks/{track['id']}/cover",
                    json={"svg": svg, "dark": False},
                    headers=auth,
                )
        elif case == "sanitizer":
            kind = ("tiny elements 1 MB", "nested styles 1 MB")[turn % 2]
            svg = SANITIZER_WORST if turn % 2 == 0 else NESTED_STYLES
            response = await http.post(
                f"/api/tracks/{track['id']}/cover",
                json={"svg": svg, "dark": False},
                headers=auth,
            )
        elif case == "preview":
            kind = "preview"
            if loop_index == 0 and turn % 10 == 0:
                await _forget_preview(stack, track["id"])
            response = await http.get(f"/share/{track['slug']}/cover.png")
        else:
            kind = "wav"
            response = await http.get(track["wav"])
        answers[f"{kind} {response.status_code}"] += 1
        if response.status_code in (429, 503):
            await asyncio.sleep(0.05)  # a hostile client, but not a spin loop on refusals


async def _forget_preview(stack: InProcessStack, track_id: str) -> None:
    """As if the share were fresh: its preview not drawn yet."""
    async with transaction(stack.store.sessions) as session:
        await session.exec(
            update(Track).where(col(Track.id) == uuid.UUID(track_id)).values(cover_png_key=None)
        )


async def _prepared_track(stack: InProcessStack, auth: dict[str, str]) -> dict[str, str]:
    """A finished track, shared, with its WAV link."""
    track_id = await _finished_track(stack.http, auth)
    shared = await stack.http.post(f"/api/tracks/{track_id}/share", headers=auth)
    link = await stack.http.get(f"/api/tracks/{track_id}/download?format=wav", headers=auth)
    parts = urlsplit(link.headers["location"])
    return {"id": track_id, "slug": shared.json()["slug"], "wav": f"{parts.path}?{parts.query}"}


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _line(name: str, latencies: list[float], failures: int) -> str:
    return (
        f"{name:<10} GET /api/me  p99 {_p99(latencies) * 1000:8.1f} ms   "
        f"worst {max(latencies) * 1000:8.1f} ms   median {statistics.median(latencies) * 1000:7.1f}"
        f" ms   n={len(latencies)} failed={failures}"
    )


async def main(seconds: float, attackers: int, loops: int, cases: list[str]) -> None:
    configure_logging("WARNING")
    report: list[str] = []
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
                # Only the bounds under test stand in the attackers' way.
                rate_limit_cover_save=100_000,
                rate_limit_cover_reroll=100_000,
                rate_limit_create_track_free=100,
            )
            async with in_process_stack(temporal.client, settings, timeout_s=120) as stack:
                http = stack.http
                victim = await stack.user("victim", 100)
                attacker_tracks: list[tuple[dict[str, str], dict[str, str]]] = []
                for index in range(attackers):
                    auth = await stack.user(f"attacker-{index}", 100)
                    attacker_tracks.append((auth, await _prepared_track(stack, auth)))
                await _read_me(http, victim, 1.0)  # warm-up
                baseline, baseline_failures = await _read_me(http, victim, seconds)
                report.append(_line("baseline", baseline, baseline_failures))
                sandbox = sandbox_for(settings)
                for case in cases:
                    stop = asyncio.Event()
                    answers: Counter[str] = Counter()
                    started = sandbox.started
                    storm = [
                        asyncio.create_task(_attack(stack, case, auth, track, i, stop, answers))
                        for auth, track in attacker_tracks
                        for i in range(loops)
                    ]
                    stormy, stormy_failures = await _read_me(http, victim, seconds)
                    stop.set()
                    await asyncio.gather(*storm)
                    report.append(_line(case, stormy, stormy_failures))
                    report.append(
                        f"{'':<10} ratio p99 {_p99(stormy) / _p99(baseline):.2f}x; "
                        f"sandbox children {sandbox.started - started}; attackers: "
                        + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
                    )

    print(f"{attackers} attackers x {loops} parallel loops, {seconds:g} s each phase")
    print(
        f"limits: render CPU {settings.cover_render_cpu_s} s, wall "
        f"{settings.cover_render_timeout_s:g} s, {settings.cover_render_max_per_user} per user, "
        f"{settings.cover_render_max_concurrent} at once; previews {settings.preview_max_renders}"
        f" drawn / {settings.preview_max_waiting} waiting; WAV {settings.wav_max_per_link} per "
        f"link / {settings.wav_max_per_user} per user / {settings.wav_max_concurrent} at once"
    )
    print("\n".join(report))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--attackers", type=int, default=3)
    parser.add_argument("--loops", type=int, default=8)
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES)
    )
    arguments = parser.parse_args()
    chosen = [case for case in arguments.cases.split(",") if case]
    if unknown := set(chosen) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    asyncio.run(main(arguments.seconds, arguments.attackers, arguments.loops, chosen))
