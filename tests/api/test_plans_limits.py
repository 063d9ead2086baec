"""Plans, credits and rate limits, each enforced by the server and seen through HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, func, select

from core.models import Job, Plan, Track
from domain.users import create_user
from tests.api_process import SOUNDFOUNDRY, api_processes
from tests.conftest import Stack

SHORT = {"prompt": "Short loop", "duration_s": 5}


async def _tracks_of(stack: Stack, user_id: uuid.UUID) -> int:
    async with stack.store.sessions() as session:
        count = await session.exec(
            select(func.count()).select_from(Track).where(col(Track.user_id) == user_id)
        )
        return count.one()


async def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(SOUNDFOUNDRY), *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------------------- plans


async def test_free_plan_caps_duration_before_anything_is_written(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=100)
    refused = await stack.http.post(
        "/api/tracks", json={"prompt": "Too long for free", "duration_s": 90}, headers=auth
    )
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "free plan tracks are at most 60 s (asked 90 s); pro allows up to 300 s"
    )
    assert await stack.credits(user_id) == 100
    assert await _tracks_of(stack, user_id) == 0
    async with stack.store.sessions() as session:
        assert (await session.exec(select(func.count()).select_from(Job))).one() == 0
    # Exactly at the cap is fine.
    await stack.create_track(auth, duration_s=60)
    assert await stack.credits(user_id) == 90


async def test_pro_plan_accepts_longer_tracks(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=100, plan=Plan.PRO)
    created = await stack.create_track(auth, duration_s=120)
    assert created["credits_required"] == 20
    assert await stack.credits(user_id) == 80
    # Rendering two minutes of audio says nothing more here.
    await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)


@pytest.mark.parametrize("stack_overrides", [{"free_max_duration_s": 30}])
async def test_plan_caps_come_from_settings(stack: Stack, stack_overrides: Any) -> None:
    _, auth = await stack.user(credits=100)
    refused = await stack.http.post(
        "/api/tracks", json={"prompt": "x", "duration_s": 31}, headers=auth
    )
    assert refused.status_code == 403
    assert "at most 30 s (asked 31 s)" in refused.json()["detail"]


# ----------------------------------------------------------------------------- credits


async def test_me_shows_plan_credits_and_limits(stack: Stack) -> None:
    free_id, free = await stack.user(credits=12)
    me = (await stack.http.get("/api/me", headers=free)).json()
    assert me["id"] == str(free_id) and me["name"].startswith("u-")
    assert (me["plan"], me["credits"]) == ("free", 12)
    assert me["limits"] == {
        "max_duration_s": 60,
        "rate_limits": {
            "create_track": {"limit": 5, "window_s": 60},
            "cover_save": {"limit": 30, "window_s": 60},
            "series_create": {"limit": 10, "window_s": 3600},
        },
    }
    _, pro = await stack.user(credits=0, plan=Plan.PRO)
    me = (await stack.http.get("/api/me", headers=pro)).json()
    assert me["plan"] == "pro" and me["limits"]["max_duration_s"] == 300
    assert me["limits"]["rate_limits"]["create_track"] == {"limit": 20, "window_s": 60}


@pytest.mark.parametrize("balance", [0, -3])
async def test_no_balance_is_402_with_a_reason(stack: Stack, balance: int) -> None:
    user_id, auth = await stack.user(credits=balance)
    response = await stack.http.post("/api/tracks", json=SHORT, headers=auth)
    assert response.status_code == 402
    detail = response.json()["detail"]
    assert f"balance is {balance}" in detail and "add credits" in detail
    assert await stack.credits(user_id) == balance
    assert await _tracks_of(stack, user_id) == 0


async def test_cli_grants_credits_and_sets_the_plan(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=0)
    name = (await stack.http.get("/api/me", headers=auth)).json()["name"]

    by_name = await cli(stack, "users", "grant", name, "--credits", "25")
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.strip().splitlines()[-1] == "25"
    by_id = await cli(stack, "users", "grant", str(user_id), "--credits", "5")
    assert by_id.stdout.strip().splitlines()[-1] == "30"
    assert await stack.credits(user_id) == 30
    await stack.create_track(auth, **SHORT)  # the granted credits are spendable

    long = {"prompt": "Long one", "duration_s": 120}
    assert (await stack.http.post("/api/tracks", json=long, headers=auth)).status_code == 403
    upgraded = await cli(stack, "users", "set-plan", str(user_id), "pro")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "pro plan" in upgraded.stdout
    me = (await stack.http.get("/api/me", headers=auth)).json()
    assert me["plan"] == "pro" and me["limits"]["max_duration_s"] == 300
    created = await stack.http.post("/api/tracks", json=long, headers=auth)
    assert created.status_code == 201, created.text
    await stack.http.post(f"/api/jobs/{created.json()['job_id']}/cancel", headers=auth)
    downgraded = await cli(stack, "users", "set-plan", name, "free")
    assert downgraded.returncode == 0 and "free plan" in downgraded.stdout

    unknown = await cli(stack, "users", "grant", "nobody-by-this-name", "--credits", "1")
    assert unknown.returncode == 1 and "no user" in unknown.stderr
    for _ in range(2):
        await create_user(stack.store.sessions, "twin", 0)
    ambiguous = await cli(stack, "users", "grant", "twin", "--credits", "1")
    assert ambiguous.returncode == 1 and "several users" in ambiguous.stderr
    bad_plan = await cli(stack, "users", "set-plan", name, "gold")
    assert bad_plan.returncode != 0 and "free or pro" in bad_plan.stderr


async def test_admin_api_grants_credits(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=0)
    _, admin = await stack.user(admin=True)
    path = f"/api/admin/users/{user_id}/credits"

    assert (await stack.http.post(path, json={"credits": 5})).status_code == 401
    refused = await stack.http.post(path, json={"credits": 5}, headers=auth)
    assert refused.status_code == 403 and refused.json()["detail"] == "admin only"
    assert await stack.credits(user_id) == 0

    granted = await stack.http.post(path, json={"credits": 40}, headers=admin)
    assert granted.status_code == 200
    assert granted.json()["credits"] == 40 and granted.json()["id"] == str(user_id)
    assert (await stack.http.get("/api/me", headers=auth)).json()["credits"] == 40

    for bad in ({"credits": 0}, {"credits": -5}, {}, {"credits": "many"}):
        response = await stack.http.post(path, json=bad, headers=admin)
        assert response.status_code == 422, bad
    missing = await stack.http.post(
        f"/api/admin/users/{uuid.uuid4()}/credits", json={"credits": 1}, headers=admin
    )
    assert missing.status_code == 404
    assert await stack.credits(user_id) == 40


# ------------------------------------------------------------------------- rate limits


async def _fire(
    targets: list[httpx.AsyncClient], auth: dict[str, str], count: int
) -> list[httpx.Response]:
    """`count` concurrent creates, spread over the given API processes."""
    return await asyncio.gather(
        *(
            targets[n % len(targets)].post("/api/tracks", json=SHORT, headers=auth)
            for n in range(count)
        )
    )


def _split(responses: list[httpx.Response]) -> tuple[int, list[httpx.Response]]:
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {201, 429}, [(r.status_code, r.text) for r in responses]
    return codes.count(201), [r for r in responses if r.status_code == 429]


async def test_rate_limits_hold_across_api_processes(stack: Stack, tmp_path: Path) -> None:
    """Two uvicorn workers in a subprocess plus the in-process app: three processes, one
    counter per user."""
    free_id, free = await stack.user(credits=100)
    _, pro = await stack.user(credits=100, plan=Plan.PRO)
    async with (
        api_processes(stack.env, tmp_path, workers=2) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as remote,
    ):
        accepted, limited = _split(await _fire([remote, stack.http, remote], free, 7))
        assert (accepted, len(limited)) == (5, 2)
        for response in limited:
            assert 1 <= int(response.headers["Retry-After"]) <= 60
            detail = response.json()["detail"]
            assert "at most 5 tracks created per 60 s on the free plan" in detail
        assert await _tracks_of(stack, free_id) == 5
        assert await stack.credits(free_id) == 95

        accepted, limited = _split(await _fire([remote, stack.http], pro, 22))
        assert (accepted, len(limited)) == (20, 2)
        assert all(r.headers["Retry-After"].isdigit() for r in limited)

        # The limit is per user: another free user still gets through.
        _, other = await stack.user(credits=10)
        assert (await remote.post("/api/tracks", json=SHORT, headers=other)).status_code == 201


async def test_rate_limit_window_comes_from_settings(stack: Stack, tmp_path: Path) -> None:
    user_id, auth = await stack.user(credits=100)
    env = {**stack.env, "RATE_LIMIT_WINDOW_S": "2", "RATE_LIMIT_CREATE_TRACK_FREE": "2"}
    async with (
        api_processes(env, tmp_path, workers=2) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        limits = (await http.get("/api/me", headers=auth)).json()["limits"]["rate_limits"]
        assert limits["create_track"] == {"limit": 2, "window_s": 2}
        codes = [
            (await http.post("/api/tracks", json=SHORT, headers=auth)).status_code for _ in range(2)
        ]
        assert codes == [201, 201]
        limited = await http.post("/api/tracks", json=SHORT, headers=auth)
        assert limited.status_code == 429
        retry_after = int(limited.headers["Retry-After"])
        assert 1 <= retry_after <= 2
        await asyncio.sleep(retry_after + 0.2)
        again = await http.post("/api/tracks", json=SHORT, headers=auth)
        assert again.status_code == 201, again.text
    assert await _tracks_of(stack, user_id) == 3


@pytest.mark.parametrize("stack_overrides", [{"rate_limit_create_track_free": 2}])
async def test_rate_limits_on_the_embedded_default(
    embedded_stack: Stack, stack_overrides: Any
) -> None:
    """The same counters on SQLite (its own upsert dialect)."""
    _, auth = await embedded_stack.user(credits=100)
    responses = await asyncio.gather(
        *(embedded_stack.http.post("/api/tracks", json=SHORT, headers=auth) for _ in range(4))
    )
    assert sorted(r.status_code for r in responses) == [201, 201, 429, 429]
