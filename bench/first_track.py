"""From `soundfoundry dev` to the first finished track, as a developer meets it.

Each run starts `soundfoundry dev` in a fresh folder (no state: migrations, the dev user
and the Temporal database are all new), waits for the token line it prints once it is
ready, creates one 5 s synth track at once and waits for COMPLETE, then stops the stack
with Ctrl-C. Printed per run and as medians:

    start -> ready         process start -> "SoundFoundry is running" (token line)
    ready -> COMPLETE      the first track, created the moment the stack said it is ready
    first activity wait    the track workflow's start -> its first activity started

    .venv/bin/python -m bench.first_track [--runs 5]

Target (issue "Fast and lean"): first track <= 5 s after ready; no track waits more
than 2 s for its first activity. Exit status 1 if a run misses one.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from temporalio.client import Client

from tests.services import start_dev_stack

BIN = Path(sys.executable).parent
FIRST_TRACK_TARGET_S = 5.0
FIRST_ACTIVITY_TARGET_S = 2.0


async def _first_activity_wait(address: str, workflow_id: str) -> float:
    client = await Client.connect(address)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].event_time.ToDatetime()
    for event in history.events:
        if event.HasField("activity_task_started_event_attributes"):
            return (event.event_time.ToDatetime() - started).total_seconds()
    raise RuntimeError(f"{workflow_id} ran no activity")


def one_run(timeout_s: float) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="sf-first-") as tmp:
        t0 = time.monotonic()
        stack = start_dev_stack(Path(tmp), BIN / "soundfoundry")
        dev, api, frontend = stack.process, stack.api, stack.frontend
        try:
            assert dev.stdout is not None
            lines = iter(dev.stdout)
            said = next((line for line in lines if line.startswith("SOUNDFOUNDRY_TOKEN=")), "")
            if not said:
                raise RuntimeError("soundfoundry dev exited before it was ready")
            ready = time.monotonic()
            threading.Thread(target=lambda: [None for _ in lines], daemon=True).start()
            auth = {"Authorization": f"Bearer {said.split('=', 1)[1].strip()}"}
            base = f"http://127.0.0.1:{api}"
            created = httpx.post(
                f"{base}/api/tracks", json={"prompt": "first track", "duration_s": 5}, headers=auth
            ).json()
            while True:
                job = httpx.get(f"{base}/api/jobs/{created['job_id']}", headers=auth).json()
                if job["status"] == "COMPLETE":
                    break
                if job["status"] not in ("QUEUED", "RENDERING"):
                    raise RuntimeError(f"the first track ended {job['status']}")
                if time.monotonic() - ready > timeout_s:
                    raise TimeoutError(f"the first track is still {job['status']}")
                time.sleep(0.05)
            done = time.monotonic()
            waited = asyncio.run(
                _first_activity_wait(f"127.0.0.1:{frontend}", created["workflow_id"])
            )
        finally:
            dev.send_signal(signal.SIGINT)
            dev.wait(timeout=60)
    return ready - t0, done - ready, waited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=120)
    args = parser.parse_args()
    results = []
    for i in range(args.runs):
        start, first, waited = one_run(args.timeout_s)
        results.append((start, first, waited))
        print(
            f"run {i + 1}: start -> ready {start:5.1f} s   ready -> COMPLETE {first:5.2f} s   "
            f"first activity after {waited:5.2f} s",
            flush=True,
        )
    starts, firsts, waits = zip(*results, strict=True)
    ok = max(firsts) <= FIRST_TRACK_TARGET_S and max(waits) <= FIRST_ACTIVITY_TARGET_S
    print(
        f"median: start -> ready {statistics.median(starts):.1f} s, ready -> COMPLETE "
        f"{statistics.median(firsts):.2f} s (max {max(firsts):.2f}, target <= "
        f"{FIRST_TRACK_TARGET_S:g}), first activity after {statistics.median(waits):.2f} s "
        f"(max {max(waits):.2f}, target <= {FIRST_ACTIVITY_TARGET_S:g})  "
        f"{'PASS' if ok else 'FAIL'}"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
