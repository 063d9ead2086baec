"""`soundfoundry api --workers N` as a subprocess: the API the way production runs it,
several processes sharing one port, for tests of what must hold across processes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.services import free_port

SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"


@contextlib.asynccontextmanager
async def api_processes(
    env: dict[str, str], log_dir: Path, workers: int = 2, timeout_s: float = 60
) -> AsyncIterator[str]:
    """Serve the API from `workers` uvicorn processes; yields its base URL."""
    port = free_port()
    log_path = log_dir / f"api-{port}.log"
    proc = _spawn(port, workers, env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_ready(proc, url, timeout_s, log_path)
        yield url
    finally:
        # uvicorn's supervisor stops its workers on SIGTERM.
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)


def _spawn(port: int, workers: int, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(SOUNDFOUNDRY), "api", "--workers", str(workers), "--port", str(port)],
            env=env,
            cwd=log_path.parent,  # away from the checkout's .env: only `env` configures it
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=2) as http:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the API exited early:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/api/health/ready")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the API was not ready in {timeout_s} s")
            await asyncio.sleep(0.2)
