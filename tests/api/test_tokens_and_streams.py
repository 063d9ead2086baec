"""API token lifecycle (create, list, revoke, expire; API and CLI), the bounds on live job
streams (per-user cap, idle deadline, revocation) and the bulk-cancel filter's scope."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from api.main import create_app
from api.routes import job_events
from core.contracts import (
    JOB_STATUS_ATTRIBUTE,
    PROVIDER_ATTRIBUTE,
    PROVIDER_HEALTH_WORKFLOW,
    RECONCILE_WORKFLOW,
    USER_ID_ATTRIBUTE,
    GenerationRequest,
)
from core.models import ApiToken, Plan, utcnow
from tests.conftest import Stack, eventually
from tests.live_server import LiveServer, bound_socket

INJECTION = "X') OR (ExecutionStatus='Running'"
SLOW = {"synth_pace": 1.0}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_of(auth: dict[str, str]) -> str:
    return auth["Authorization"].removeprefix("Bearer ")


async def queued_job(stack: Stack, user_id: uuid.UUID) -> uuid.UUID:
    """A job that stays QUEUED and never changes: no workflow is started for it."""
    request = GenerationRequest(prompt="quiet", duration_s=5, seed=1)
    _, job = await stack.store.create_track(user_id, request, 1)
    return job.id


async def sse_events(stream: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event name, data) for each event of an open stream; comments are skipped."""
    name = ""
    async for line in stream.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


# ------------------------------------------------------------------------------ tokens


async def test_tokens_are_created_listed_and_revoked_through_the_api(stack: Stack) -> None:
    user_id, auth = await stack.user()
    _, stranger = await stack.user()

    created = await stack.http.post(
        "/api/tokens/self", json={"name": "laptop", "expires_in_days": 30}, headers=auth
    )
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    fresh = created.json()
    assert fresh["name"] == "laptop" and fresh["active"] is True
    assert fresh["expires_at"] is not None and fresh["revoked_at"] is None
    me = await stack.http.get("/api/me", headers=bearer(fresh["token"]))
    assert me.status_code == 200 and me.json()["id"] == str(user_id)

    listed = (await stack.http.get("/api/tokens/self", headers=auth)).json()
    assert {t["name"] for t in listed} == {"default", "laptop"}
    assert fresh["token"] not in json.dumps(listed) and all("token" not in t for t in listed)
    # Used just now: the list says so.
    assert next(t for t in listed if t["id"] == fresh["id"])["last_used_at"] is not None

    # Another user's token id is not found, and stays usable.
    refused = await stack.http.delete(f"/api/tokens/self/{fresh['id']}", headers=stranger)
    assert refused.status_code == 404
    assert (await stack.http.get("/api/me", headers=bearer(fresh["token"]))).status_code == 200

    revoked = await stack.http.delete(f"/api/tokens/self/{fresh['id']}", headers=auth)
    assert revoked.status_code == 204
    after = await stack.http.get("/api/me", headers=bearer(fresh["token"]))
    assert after.status_code == 401
    listed = (await stack.http.get("/api/tokens/self", headers=auth)).json()
    gone = next(t for t in listed if t["id"] == fresh["id"])
    assert gone["revoked_at"] is not None and gone["active"] is False
    # The caller's other token is untouched.
    assert (await stack.http.get("/api/me", headers=auth)).status_code == 200


async def test_token_requests_are_validated_and_capped(stack: Stack) -> None:
    _, auth = await stack.user()
    for body in ({"expires_in_days": 0}, {"name": ""}, {"name": "a" * 101}, {"token": "mine"}):
        answer = await stack.http.post("/api/tokens/self", json=body, headers=auth)
        assert answer.status_code == 422, (body, answer.text)

    limit = stack.settings.api_tokens_max_per_user
    # The user already holds one (made with the user).
    for _ in range(limit - 1):
        made = await stack.http.post("/api/tokens/self", json={}, headers=auth)
        assert made.status_code == 201
    over = await stack.http.post("/api/tokens/self", json={}, headers=auth)
    assert over.status_code == 409 and "revoke one first" in over.json()["detail"]


async def test_an_expired_token_is_refused(stack: Stack) -> None:
    _, auth = await stack.user()
    created = (
        await stack.http.post("/api/tokens/self", json={"expires_in_days": 1}, headers=auth)
    ).json()
    assert (await stack.http.get("/api/me", headers=bearer(created["token"]))).status_code == 200

    # A day passes.
    async with stack.store.sessions() as session, session.begin():
        await session.exec(
            update(ApiToken)
            .where(col(ApiToken.id) == uuid.UUID(created["id"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    answer = await stack.http.get("/api/me", headers=bearer(created["token"]))
    assert answer.status_code == 401
    listed = (await stack.http.get("/api/tokens/self", headers=auth)).json()
    assert next(t for t in listed if t["id"] == created["id"])["active"] is False


async def test_last_use_is_recorded_at_most_once_a_minute(stack: Stack) -> None:
    user_id, auth = await stack.user()

    async def last_used() -> Any:
        async with stack.store.sessions() as session:
            rows = await session.exec(select(ApiToken).where(col(ApiToken.user_id) == user_id))
            return rows.one().last_used_at

    assert await last_used() is None
    assert (await stack.http.get("/api/me", headers=auth)).status_code == 200
    first = await last_used()
    assert first is not None
    for _ in range(3):
        assert (await stack.http.get("/api/me", headers=auth)).status_code == 200
    assert await last_used() == first


async def test_tokens_from_the_cli(stack: Stack) -> None:
    user_id, auth = await stack.user()
    name = (await stack.http.get("/api/me", headers=auth)).json()["name"]

    made = await stack.cli("tokens", "create", name, "--name", "ci-runner", "--expires-in", "7")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("sf_")
    assert (await stack.http.get("/api/me", headers=bearer(token))).json()["id"] == str(user_id)

    listed = await stack.cli("tokens", "list", str(user_id))
    assert listed.returncode == 0, listed.stderr
    assert "ci-runner" in listed.stdout and "default" in listed.stdout
    for header in ("id", "name", "created", "last used", "expires", "revoked"):
        assert header in listed.stdout
    assert token not in listed.stdout + listed.stderr

    token_id = next(
        t["id"]
        for t in (await stack.http.get("/api/tokens/self", headers=auth)).json()
        if t["name"] == "ci-runner"
    )
    revoked = await stack.cli("tokens", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    assert (await stack.http.get("/api/me", headers=bearer(token))).status_code == 401

    unknown = await stack.cli("tokens", "revoke", str(uuid.uuid4()))
    assert unknown.returncode == 1 and "no token" in unknown.stderr
    nobody = await stack.cli("tokens", "create", "no-such-user")
    assert nobody.returncode == 1 and "no user" in nobody.stderr


# ----------------------------------------------------------------------------- streams


def live_app(stack: Stack, **overrides: Any) -> LiveServer:
    return LiveServer(create_app(stack.settings.model_copy(update=overrides)), bound_socket())


async def test_revoking_a_token_closes_its_open_stream(embedded_stack: Stack) -> None:
    user_id, auth = await embedded_stack.user()
    job_id = await queued_job(embedded_stack, user_id)
    made = await embedded_stack.http.post("/api/tokens/self", json={"name": "tab"}, headers=auth)
    doomed = made.json()

    with live_app(embedded_stack, sse_token_recheck_s=0.5) as server:
        url = f"{server.url}/api/jobs/{job_id}/events?token={doomed['token']}"
        seen: list[tuple[str, Any]] = []
        async with (
            asyncio.timeout(60),
            httpx.AsyncClient(timeout=10) as client,
            client.stream("GET", url) as stream,
        ):
            assert stream.status_code == 200
            async for event in sse_events(stream):
                seen.append(event)
                if event[0] == "status":
                    # Revoked with the user's other token while the stream is open.
                    gone = await client.delete(
                        f"{server.url}/api/tokens/self/{doomed['id']}", headers=auth
                    )
                    assert gone.status_code == 204
            # The server ended it (a read timeout would have raised instead).
        assert seen[-1] == (
            "closed",
            {"reason": "token", "detail": "the token was revoked or has expired"},
        )
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(url)).status_code == 401
        await eventually(lambda: job_events.stream_slots.held(user_id) == 0, 10, "slot freed")


async def test_a_stream_on_a_stuck_job_ends_at_the_idle_deadline(embedded_stack: Stack) -> None:
    user_id, auth = await embedded_stack.user()
    job_id = await queued_job(embedded_stack, user_id)

    with live_app(embedded_stack, sse_idle_timeout_s=1.0) as server:
        url = f"{server.url}/api/jobs/{job_id}/events"
        async with (
            asyncio.timeout(60),
            httpx.AsyncClient(timeout=10) as client,
            client.stream("GET", url, headers=auth) as stream,
        ):
            seen = [event async for event in sse_events(stream)]
    assert seen[0][0] == "status" and seen[0][1]["status"] == "QUEUED"
    assert seen[-1][0] == "closed"
    assert seen[-1][1]["reason"] == "idle" and seen[-1][1]["status"] == "QUEUED"
    assert "has not changed" in seen[-1][1]["detail"]


async def test_open_streams_per_user_are_capped(embedded_stack: Stack) -> None:
    user_id, auth = await embedded_stack.user()
    other_id, other = await embedded_stack.user()
    job_id = await queued_job(embedded_stack, user_id)
    other_job = await queued_job(embedded_stack, other_id)

    with live_app(embedded_stack, sse_max_streams_per_user=2) as server:
        url = f"{server.url}/api/jobs/{job_id}/events"
        async with AsyncExitStack() as streams, httpx.AsyncClient(timeout=10) as client:
            held = []
            for _ in range(2):
                stream = await streams.enter_async_context(client.stream("GET", url, headers=auth))
                assert stream.status_code == 200
                held.append(stream)
            refused = await client.get(url, headers=auth)
            assert refused.status_code == 429
            assert "at most 2 live job streams" in refused.json()["detail"]
            assert "retry-after" in refused.headers
            # Someone else's streams are not affected.
            async with client.stream(
                "GET", f"{server.url}/api/jobs/{other_job}/events", headers=other
            ) as theirs:
                assert theirs.status_code == 200

            await held[0].aclose()

            async def one_more_allowed() -> bool:
                async with client.stream("GET", url, headers=auth) as extra:
                    return extra.status_code == 200

            await eventually(one_more_allowed, 15, "a freed slot")
        await eventually(lambda: job_events.stream_slots.held(user_id) == 0, 10, "slots freed")


# ------------------------------------------------------------------------ bulk cancel


USER_ID = USER_ID_ATTRIBUTE
PROVIDER = PROVIDER_ATTRIBUTE
JOB_STATUS = JOB_STATUS_ATTRIBUTE


async def start_decoys(stack: Stack, user_id: uuid.UUID) -> list[WorkflowHandle[Any, Any]]:
    """Reconcile and health workflows that stay Running (no worker polls their queue) and
    carry the same search attributes as the user's track, so only the workflow-type scope
    keeps them out of a bulk cancel."""
    attributes = TypedSearchAttributes(
        [
            SearchAttributePair(USER_ID, str(user_id)),
            SearchAttributePair(PROVIDER, "synth"),
            SearchAttributePair(JOB_STATUS, "RENDERING"),
        ]
    )
    handles = []
    for workflow_type in (RECONCILE_WORKFLOW, PROVIDER_HEALTH_WORKFLOW):
        handles.append(
            await stack.temporal.client.start_workflow(
                workflow_type,
                id=f"decoy-{workflow_type}-{uuid.uuid4().hex[:8]}",
                task_queue=f"nobody-{uuid.uuid4().hex[:8]}",
                search_attributes=attributes,
            )
        )

    async def listed() -> bool:
        found = [
            w.id
            async for w in stack.temporal.client.list_workflows(f"UserId = '{user_id}'")
            if w.id.startswith("decoy-")
        ]
        return len(found) == len(handles)

    await eventually(listed, 30, "decoys visible")
    return handles


async def still_running(handles: list[WorkflowHandle[Any, Any]]) -> bool:
    states = [(await handle.describe()).status for handle in handles]
    return all(state is WorkflowExecutionStatus.RUNNING for state in states)


@pytest.mark.parametrize("stack_overrides", [SLOW])
async def test_bulk_cancel_cannot_reach_other_workflows(stack: Stack, stack_overrides: Any) -> None:
    # Long enough (synth_pace 1.0) to still be rendering after the CLI attempts below.
    user_id, auth = await stack.user(credits=40, plan=Plan.PRO)
    _, admin = await stack.user(admin=True)
    created = await stack.create_track(auth, duration_s=120)
    await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")
    decoys = await start_decoys(stack, user_id)
    try:
        # The injection, in every field, through the API and the CLI: refused, nothing runs.
        for field in ("status", "provider", "user_id", "older_than_minutes"):
            answer = await stack.http.post(
                "/api/admin/jobs/cancel", json={field: INJECTION}, headers=admin
            )
            assert answer.status_code == 422, (field, answer.text)
        for option in ("--status", "--provider", "--user", "--older-than"):
            done = await stack.cli("admin", "cancel", option, INJECTION, "--yes")
            assert done.returncode != 0, (option, done.stdout)
            assert done.stdout.strip() == ""
        old = await stack.http.post(
            "/api/admin/jobs/cancel", json={"query": INJECTION}, headers=admin
        )
        assert old.status_code == 422
        assert "no longer accepted" in json.dumps(old.json()["detail"])
        old_cli = await stack.cli("admin", "cancel", "--query", INJECTION, "--yes")
        assert old_cli.returncode == 2 and "--query is gone" in old_cli.stderr

        # A filter every decoy matches but for its type cancels the track alone.
        answer = await stack.http.post(
            "/api/admin/jobs/cancel",
            json={"user_id": str(user_id), "provider": "synth", "status": "RENDERING"},
            headers=admin,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"cancelled": [created["workflow_id"]]}
        job = await stack.wait_for_job(created["job_id"], auth)
        assert job["status"] == "CANCELLED"
        assert await still_running(decoys)
    finally:
        for handle in decoys:
            await handle.terminate("test over")
