"""`Idempotency-Key` on POST /api/tracks: a repeat gets the first answer, once charged."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from sqlmodel import col, func, select

from core.models import IdempotencyKey, Job, Plan, Track
from tests.api_process import api_processes
from tests.conftest import Stack, eventually

BODY = {"prompt": "Warm ambient pad", "duration_s": 5}  # 1 credit


async def _rows(stack: Stack, user_id: uuid.UUID) -> tuple[int, int]:
    async with stack.store.sessions() as session:
        tracks = await session.exec(
            select(func.count()).select_from(Track).where(col(Track.user_id) == user_id)
        )
        jobs = await session.exec(
            select(func.count()).select_from(Job).where(col(Job.user_id) == user_id)
        )
        return tracks.one(), jobs.one()


async def _workflows(stack: Stack, query: str) -> int:
    return (await stack.temporal.client.count_workflows(query)).count


async def _exactly_one_workflow(stack: Stack, track_id: str) -> None:
    # Visibility is eventually consistent: wait for the one, then make sure it stays one.
    by_track = f"TrackId = '{track_id}'"
    await eventually(lambda: _one(stack, by_track), 15, "the workflow in visibility")
    await asyncio.sleep(0.5)
    assert await _workflows(stack, by_track) == 1
    assert await _workflows(stack, f"TaskQueue = '{stack.settings.task_queue}'") == 1


async def _one(stack: Stack, query: str) -> bool:
    return await _workflows(stack, query) >= 1


async def test_a_repeat_returns_the_first_response_once_charged(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=10)
    key = {**auth, "Idempotency-Key": "create-0001"}
    first = await stack.http.post("/api/tracks", json=BODY, headers=key)
    assert first.status_code == 201, first.text
    # The same body, spelled differently (key order, a default made explicit).
    same = {"duration_s": 5, "has_vocals": False, "prompt": "Warm ambient pad"}
    again = await stack.http.post("/api/tracks", json=same, headers=key)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"

    assert await stack.credits(user_id) == 9
    assert await _rows(stack, user_id) == (1, 1)
    await _exactly_one_workflow(stack, first.json()["track_id"])

    other_body = await stack.http.post(
        "/api/tracks", json={**BODY, "prompt": "Something else"}, headers=key
    )
    assert other_body.status_code == 409
    assert "different request body" in other_body.json()["detail"]
    assert await stack.credits(user_id) == 9
    assert await _rows(stack, user_id) == (1, 1)

    # Keys belong to a user: another user's identical key is a new request.
    other_id, other = await stack.user(credits=10)
    theirs = await stack.http.post(
        "/api/tracks", json=BODY, headers={**other, "Idempotency-Key": "create-0001"}
    )
    assert theirs.status_code == 201
    assert theirs.json()["track_id"] != first.json()["track_id"]
    assert await stack.credits(other_id) == 9

    # Without a key every request is new.
    await stack.create_track(auth, **BODY)
    assert await _rows(stack, user_id) == (2, 2)

    job = await stack.wait_for_job(first.json()["job_id"], auth)
    assert job["status"] == "COMPLETE"
    # A replay after the job finished still answers what was first answered.
    late = await stack.http.post("/api/tracks", json=BODY, headers=key)
    assert late.json() == first.json() and late.status_code == 201


async def test_concurrent_duplicates_make_one_track(stack: Stack, tmp_path: Path) -> None:
    """Five at once through three processes (two uvicorn workers and the in-process app)
    race on the key inside the credit transaction: one track, one charge, one answer."""
    user_id, auth = await stack.user(credits=10, plan=Plan.PRO)
    key = {**auth, "Idempotency-Key": f"race-{uuid.uuid4()}"}
    async with (
        api_processes(stack.env, tmp_path, workers=2) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as remote,
    ):
        targets = [remote, stack.http, remote, stack.http, remote]
        responses = await asyncio.gather(
            *(http.post("/api/tracks", json=BODY, headers=key) for http in targets)
        )
    assert [r.status_code for r in responses] == [201] * 5, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert all(body == bodies[0] for body in bodies)
    assert await stack.credits(user_id) == 9
    assert await _rows(stack, user_id) == (1, 1)
    await _exactly_one_workflow(stack, bodies[0]["track_id"])
    async with stack.store.sessions() as session:
        stored = (
            await session.exec(select(IdempotencyKey).where(col(IdempotencyKey.user_id) == user_id))
        ).all()
    assert len(stored) == 1 and stored[0].response == bodies[0]


async def test_concurrent_duplicates_with_credit_for_only_one(stack: Stack) -> None:
    """The winner spends the last credit; the losers still answer its 201, not 402."""
    user_id, auth = await stack.user(credits=1, plan=Plan.PRO)
    key = {**auth, "Idempotency-Key": "last-credit"}
    responses = await asyncio.gather(
        *(stack.http.post("/api/tracks", json=BODY, headers=key) for _ in range(5))
    )
    assert [r.status_code for r in responses] == [201] * 5, [r.text for r in responses]
    assert len({r.json()["track_id"] for r in responses}) == 1
    assert await stack.credits(user_id) == 0
    assert await _rows(stack, user_id) == (1, 1)


async def test_bad_keys_are_422(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=10)
    for bad in ("", "x" * 256, "has space", "tab\tinside"):
        response = await stack.http.post(
            "/api/tracks", json=BODY, headers={**auth, "Idempotency-Key": bad}
        )
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await _rows(stack, user_id) == (0, 0)
    longest = await stack.http.post(
        "/api/tracks", json=BODY, headers={**auth, "Idempotency-Key": "k" * 255}
    )
    assert longest.status_code == 201


async def test_keys_work_on_the_embedded_default(embedded_stack: Stack) -> None:
    """SQLite spells the upsert differently; the behaviour is the same."""
    user_id, auth = await embedded_stack.user(credits=10, plan=Plan.PRO)
    key = {**auth, "Idempotency-Key": "sqlite-1"}
    responses = await asyncio.gather(
        *(embedded_stack.http.post("/api/tracks", json=BODY, headers=key) for _ in range(3))
    )
    assert [r.status_code for r in responses] == [201] * 3, [r.text for r in responses]
    assert len({r.json()["track_id"] for r in responses}) == 1
    again = await embedded_stack.http.post("/api/tracks", json=BODY, headers=key)
    assert again.json() == responses[0].json()
    changed = await embedded_stack.http.post(
        "/api/tracks", json={**BODY, "duration_s": 6}, headers=key
    )
    assert changed.status_code == 409
    assert await embedded_stack.credits(user_id) == 9
    assert await _rows(embedded_stack, user_id) == (1, 1)
