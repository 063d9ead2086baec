"""README "Running the parts separately": a plain `temporal server start-dev` knows none
of our search attributes; the first worker registers them, and `doctor` says so."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from core.temporal import SEARCH_ATTRIBUTE_NAMES, missing_search_attributes
from tests.conftest import Stack
from tests.services import TemporalDevServer

SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"


async def test_a_worker_registers_the_search_attributes_on_a_plain_server(stack: Stack) -> None:
    async with TemporalDevServer(search_attributes=(), ui=False) as bare:
        env = {**stack.env, "TEMPORAL_ADDRESS": bare.target_host, "WORKER_METRICS_PORT": "0"}
        assert sorted(await missing_search_attributes(bare.client, "default")) == sorted(
            SEARCH_ATTRIBUTE_NAMES
        )
        doctor = await asyncio.to_thread(
            subprocess.run,
            [str(SOUNDFOUNDRY), "doctor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "search attributes not registered" in doctor.stdout + doctor.stderr

        worker = _spawn_worker(env)
        try:
            assert worker.stdout is not None
            stdout = worker.stdout

            def wait_ready() -> dict[str, object]:
                for line in stdout:
                    if b"worker ready" in line:
                        record: dict[str, object] = json.loads(line)
                        return record
                raise AssertionError("the worker exited before it was ready")

            ready = await asyncio.wait_for(asyncio.to_thread(wait_ready), 60)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        assert await missing_search_attributes(bare.client, "default") == []
        # The worker as operators start it runs on uvloop's event loop.
        assert ready["event_loop"] == "uvloop"


def _spawn_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(SOUNDFOUNDRY), "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
