"""Property-based fuzzing of the whole OpenAPI schema with Schemathesis: never a 5xx.

Schemathesis reads the app's own /openapi.json and, for every operation, sends what the
schema allows and what it does not (boundary values, wrong types, missing fields), then
chains operations through their responses (create a track, then read, cancel, share it).
The only check is `not_a_server_error`: a 4xx is a fine answer to a bad request; a 5xx is
a bug. It runs over HTTP against the real stack (Postgres, S3, Temporal) served by
uvicorn on a loopback port, as a user with plenty of credits and the rate limits raised so
they do not hide what sits behind them.

Bounded and repeatable: a few examples per operation, a fixed seed, deterministic
generation (no example database carried between runs), and a hard deadline.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.main import create_app
from core.models import Plan
from core.settings import Settings
from tests.conftest import PROJECT_ROOT, Stack
from tests.live_server import LiveServer, bound_socket

pytestmark = pytest.mark.timeout(420)

EXAMPLES_PER_OPERATION = 10
# The whole run's deadline; a normal run takes well under it.
DEADLINE_S = 300
REQUEST_TIMEOUT_S = 20
REPORTS = PROJECT_ROOT / "test-artifacts" / "schema-fuzz"
# Real ids for the `{track_id}` and `{job_id}` path parameters half of the time, so the
# fuzzer gets past "not found" into the logic behind (share, cover, cancel, logs).
KNOWN_ID_PROBABILITY = 0.5

# Revoking a token can revoke the run's own (Schemathesis reuses ids it saw in earlier
# responses, such as the token list), after which everything would be a 401. So this one
# operation runs by itself, after the rest.
LAST = "/api/tokens/self/{token_id}"


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    # Every per-user count limit raised (windows kept), whatever limits exist now, and the
    # optional style features on so their routes answer more than 403. The admin routes
    # stay 403: the fuzzing user is an ordinary user, and that refusal is what it must see.
    raised: dict[str, Any] = {
        name: 1_000_000
        for name in Settings.model_fields
        if name.startswith("rate_limit_") and not name.endswith("_window_s")
    }
    return {**raised, "style_unlocks_enabled": True, "style_series_enabled": True}


@pytest.fixture
def live_api(stack: Stack) -> Iterator[str]:
    with LiveServer(create_app(stack.settings), bound_socket()) as server:
        yield server.url


def write_config(path: Path, token: str, tracks: list[dict[str, Any]]) -> Path:
    def toml_list(values: list[str]) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    path.write_text(
        f"""
headers = {{ Authorization = "Bearer {token}" }}
# The job event stream stays open until its job ends; read its first events, not forever.
max-stream-events = 3

[dictionaries.tracks]
values = {toml_list([t["track_id"] for t in tracks])}

[dictionaries.jobs]
values = {toml_list([t["job_id"] for t in tracks])}

[parameters]
"path.track_id" = {{ dictionary = "tracks", probability = {KNOWN_ID_PROBABILITY} }}
"path.job_id" = {{ dictionary = "jobs", probability = {KNOWN_ID_PROBABILITY} }}
"""
    )
    return path


def schemathesis_command(url: str, config: Path, *selection: str) -> list[str]:
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        # The same cases every run (this mode also keeps no example database).
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        str(REQUEST_TIMEOUT_S),
        "--report",
        "junit",
        "--report-dir",
        str(REPORTS),
        "--no-color",
        "--output-truncate",
        "false",
    ]
    return [*command, *selection]


async def test_no_operation_answers_a_server_error(
    stack: Stack, live_api: str, tmp_path: Path
) -> None:
    # The free plan (tracks up to 60 s) keeps the worker's rendering of fuzzed tracks short.
    _, auth = await stack.user(credits=1_000_000, plan=Plan.FREE)
    token = auth["Authorization"].removeprefix("Bearer ")
    tracks = [
        await stack.create_track(auth, prompt=f"Fuzz seed {n}", duration_s=5 * n) for n in (1, 2, 3)
    ]
    REPORTS.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp_path / "schemathesis.toml", token, tracks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    for name, selection in (("all", ["--exclude-path", LAST]), ("last", ["--include-path", LAST])):
        run = await asyncio.to_thread(
            subprocess.run,
            schemathesis_command(live_api, config, *selection),
            capture_output=True,
            text=True,
            timeout=max(deadline - loop.time(), 1),
            cwd=tmp_path,
        )
        (REPORTS / f"output-{name}.txt").write_text(run.stdout + run.stderr)
        # The summary names each failing operation with a curl command that reproduces it.
        assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
        assert " passed" in run.stdout
        # Had the run lost its own token, most of it would have been 401s, proving nothing.
        assert (await stack.http.get("/api/me", headers=auth)).status_code == 200, name
