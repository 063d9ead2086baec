"""The command line as an operator uses it: users, migrate, and the whole dev stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from tests.procfs import alive, children_of
from tests.services import start_dev_stack

BIN = Path(sys.executable).parent


def run_cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        [str(BIN / "soundfoundry"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_users_create_prints_a_working_token_on_its_last_line(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}
    run_cli("migrate", cwd=tmp_path, env=env)
    out = run_cli("users", "create", "--credits", "7", "--name", "ops", cwd=tmp_path, env=env)
    token = out.strip().splitlines()[-1]
    assert token.startswith("sf_") and len(token) > 40

    import asyncio

    from core.db import create_engine, session_factory
    from domain.users import user_for_token

    async def lookup() -> tuple[str, int] | None:
        engine = create_engine(env["DATABASE_URL"])
        try:
            user = await user_for_token(session_factory(engine), token)
            return (user.name, user.credits) if user else None
        finally:
            await engine.dispose()

    assert asyncio.run(lookup()) == ("ops", 7)


def test_dev_stack_serves_create_poll_download_and_stops_cleanly(tmp_path: Path) -> None:
    stack = start_dev_stack(tmp_path, BIN / "soundfoundry")
    dev, api, frontend, ui, env = stack.process, stack.api, stack.frontend, stack.ui, stack.env
    try:
        token_file = tmp_path / ".soundfoundry" / "dev-token"
        deadline = time.monotonic() + 120
        while not (token_file.exists() and _answers(f"http://127.0.0.1:{api}/api/health")):
            assert dev.poll() is None, "soundfoundry dev exited early"
            assert time.monotonic() < deadline, "the dev stack did not come up"
            time.sleep(0.5)
        token = token_file.read_text().strip()

        out = run_cli(
            "create", "Warm ambient pad", "--duration", "6", "--wait",
            "--out", str(tmp_path / "out"), "--api-url", f"http://127.0.0.1:{api}",
            cwd=tmp_path, env={**env, "SOUNDFOUNDRY_TOKEN": token},
        )  # fmt: skip
        audio = Path(out.strip().splitlines()[-1])
        info = sf.info(str(audio))
        assert audio.suffix == ".flac" and info.format == "FLAC"  # the master, by default
        assert info.samplerate == 44100 and abs(info.duration - 6) < 0.1
        assert audio.with_suffix(".svg").exists()
        out = run_cli(
            "create", "Warm ambient pad", "--duration", "6", "--wait", "--format", "mp3",
            "--out", str(tmp_path / "out"), "--api-url", f"http://127.0.0.1:{api}",
            cwd=tmp_path, env={**env, "SOUNDFOUNDRY_TOKEN": token},
        )  # fmt: skip
        stream = Path(out.strip().splitlines()[-1])
        assert stream.suffix == ".mp3" and sf.info(str(stream)).format == "MP3"
        assert abs(sf.info(str(stream)).duration - 6) < 0.1

        # The Temporal Web UI is up and the workflow is listed by the real CLI.
        assert httpx.get(f"http://127.0.0.1:{ui}/", timeout=10).status_code == 200
        listing = subprocess.run(
            [str(BIN / "temporal"), "workflow", "list", "--address", f"127.0.0.1:{frontend}"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert f"track-{audio.stem}" in listing
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(timeout=60)
    assert code == 0
    for port in (api, frontend, ui):
        assert not _answers(f"http://127.0.0.1:{port}/"), f"port {port} still open"


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP], ids=["killed", "hangup"])
def test_dev_stack_is_ready_when_it_says_so_and_leaves_nothing_behind(
    tmp_path: Path, how: signal.Signals
) -> None:
    stack = start_dev_stack(tmp_path, BIN / "soundfoundry")
    dev, api, frontend, ui = stack.process, stack.api, stack.frontend, stack.ui
    children: list[int] = []
    try:
        assert dev.stdout is not None
        token = next(
            (
                line.split("=", 1)[1].strip()
                for line in dev.stdout
                if line.startswith("SOUNDFOUNDRY_TOKEN=")
            ),
            None,
        )
        assert token, "soundfoundry dev never said it was running"
        children = children_of(dev.pid)
        assert len(children) == 3, children  # Temporal, the worker, the API
        # Ready means ready: a track created the moment it says so is picked up at once.
        auth = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{api}"
        created = httpx.post(
            f"{base}/api/tracks", json={"prompt": "ready check", "duration_s": 5}, headers=auth
        ).json()
        deadline = time.monotonic() + 30
        while (job := httpx.get(f"{base}/api/jobs/{created['job_id']}", headers=auth).json())[
            "status"
        ] != "COMPLETE":
            assert job["status"] in ("QUEUED", "RENDERING"), job
            assert time.monotonic() < deadline, f"the first track is still {job['status']}"
            time.sleep(0.2)
        dev.send_signal(how)
        dev.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if alive(pid)], "children outlived soundfoundry dev"
        for port in (api, frontend, ui):
            assert not _answers(f"http://127.0.0.1:{port}/"), f"port {port} still open"
    finally:
        for pid in [dev.pid, *children]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        dev.wait(timeout=10)
