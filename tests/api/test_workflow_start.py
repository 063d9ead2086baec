"""Starting a track's workflow: a lost answer, a real failure, and the reconciler's restart.

The faults sit on the API's Temporal client, where a network would put them: a start the
server took whose answer never comes back, a start that never left, and a Temporal that
cannot be asked afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from sqlmodel import col, func, select
from temporalio.client import (
    DescribeWorkflowInput,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowExecutionDescription,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from api.main import create_app
from api.temporal import TemporalGateway
from core.contracts import GenerationRequest
from core.models import Job, Track
from domain.tracks.start import TRACK_ID_ATTRIBUTE, USER_ID_ATTRIBUTE
from tests.conftest import Stack, eventually
from tests.e2e.test_operators import reconciler
from tests.e2e.test_webhooks import Receiver, receiver

__all__ = ["receiver", "reconciler"]

BODY = {"prompt": "Warm ambient pad", "duration_s": 5}  # 1 credit
# Small enough that the reconciler picks a lost job up within the test.
RECONCILER_SOON = {"reconcile_interval_s": 1, "reconcile_start_after_s": 1}


def _unavailable() -> RPCError:
    return RPCError("connection reset by peer", RPCStatusCode.UNAVAILABLE, b"")


class TemporalFault(Interceptor):
    """Makes the next `starts` StartWorkflowExecution calls fail, after the server took
    them (`reach_server`, a lost answer) or before they left; and the next `describes`
    DescribeWorkflowExecution calls fail as if Temporal were unreachable."""

    def __init__(self) -> None:
        self.starts = 0
        self.reach_server = True
        self.describes = 0
        self.fired: list[str] = []

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _Faulty(next, self)


class _Faulty(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, fault: TemporalFault) -> None:
        super().__init__(next)
        self.fault = fault

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        if self.fault.starts <= 0:
            return await super().start_workflow(input)
        self.fault.starts -= 1
        if self.fault.reach_server:
            await super().start_workflow(input)
        self.fault.fired.append("start")
        raise _unavailable()

    async def describe_workflow(self, input: DescribeWorkflowInput) -> WorkflowExecutionDescription:
        if self.fault.describes <= 0:
            return await super().describe_workflow(input)
        self.fault.describes -= 1
        self.fault.fired.append("describe")
        raise _unavailable()


@dataclasses.dataclass
class FaultyApi:
    http: httpx.AsyncClient
    fault: TemporalFault


@pytest_asyncio.fixture
async def faulty_api(stack: Stack) -> AsyncIterator[FaultyApi]:
    """Another API process on the same stack whose Temporal client carries the fault."""
    fault = TemporalFault()
    app = create_app(stack.settings)
    async with LifespanManager(app):
        app.state.services = dataclasses.replace(
            app.state.services,
            temporal=TemporalGateway(stack.settings, interceptors=[fault]),
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as http:
            yield FaultyApi(http, fault)


async def _rows(stack: Stack, user_id: uuid.UUID) -> tuple[int, int]:
    async with stack.store.sessions() as session:
        tracks = await session.exec(
            select(func.count()).select_from(Track).where(col(Track.user_id) == user_id)
        )
        jobs = await session.exec(
            select(func.count()).select_from(Job).where(col(Job.user_id) == user_id)
        )
        return tracks.one(), jobs.one()


async def _job_row(stack: Stack, job_id: str) -> Job:
    async with stack.store.sessions() as session:
        job = await session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


async def _log_events(stack: Stack, job_id: str, auth: dict[str, str]) -> list[str]:
    logs = (await stack.http.get(f"/api/jobs/{job_id}/logs", headers=auth)).json()
    return [entry["event"] for entry in logs]


async def test_a_start_whose_answer_is_lost_makes_one_track_charged_once(
    stack: Stack, faulty_api: FaultyApi
) -> None:
    faulty_api.fault.starts = 1  # the server starts the workflow; the answer is lost
    user_id, auth = await stack.user(credits=10)
    key = {**auth, "Idempotency-Key": "lost-answer-1"}

    first = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert faulty_api.fault.fired == ["start"]
    assert first.status_code == 201, first.text
    created = first.json()

    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE" and job["credits_refunded"] is False
    assert await stack.credits(user_id) == 10 - created["credits_required"]
    assert await _rows(stack, user_id) == (1, 1)
    # The run the server started is the job's run.
    described = await stack.temporal.client.get_workflow_handle(created["workflow_id"]).describe()
    assert (await _job_row(stack, created["job_id"])).run_id == described.run_id

    again = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert again.status_code == 201
    assert again.json() == created and again.headers["Idempotent-Replayed"] == "true"
    assert await _rows(stack, user_id) == (1, 1)
    assert await stack.credits(user_id) == 10 - created["credits_required"]


async def test_a_start_that_never_reached_temporal_is_refunded_and_retried(
    stack: Stack, faulty_api: FaultyApi
) -> None:
    faulty_api.fault.starts, faulty_api.fault.reach_server = 1, False
    user_id, auth = await stack.user(credits=10)
    key = {**auth, "Idempotency-Key": "never-sent-1"}

    refused = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert refused.status_code == 503, refused.text
    assert "refunded" in refused.json()["detail"]
    assert await stack.credits(user_id) == 10
    [failed] = (await stack.http.get("/api/tracks", headers=auth)).json()["items"]
    assert failed["status"] == "FAILED"
    failed_job = (await stack.http.get(f"/api/jobs/{failed['job_id']}", headers=auth)).json()
    assert failed_job["error_code"] == "workflow_start_failed"
    assert failed_job["credits_refunded"] is True

    # The key was released: the same request now makes a new track, which is delivered.
    retry = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert retry.status_code == 201, retry.text
    created = retry.json()
    assert created["track_id"] != failed["id"]
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE"
    assert await stack.credits(user_id) == 10 - created["credits_required"]
    replayed = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert replayed.status_code == 201 and replayed.json() == created
    assert await _rows(stack, user_id) == (2, 2)
    assert faulty_api.fault.fired == ["start"]


async def test_a_lost_answer_temporal_cannot_confirm_is_accepted_once(
    stack: Stack, faulty_api: FaultyApi
) -> None:
    """The start happened but Temporal cannot be asked: 202, kept, no second track."""
    faulty_api.fault.starts, faulty_api.fault.describes = 1, 1
    user_id, auth = await stack.user(credits=10)
    key = {**auth, "Idempotency-Key": "unconfirmed-1"}

    first = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert faulty_api.fault.fired == ["start", "describe"]
    assert first.status_code == 202, first.text
    accepted = first.json()
    assert set(accepted) == {"track_id", "job_id", "credits_required", "status", "workflow_id"}
    assert accepted["status"] == "QUEUED"
    assert await stack.credits(user_id) == 10 - accepted["credits_required"]

    again = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert again.status_code == 202 and again.json() == accepted
    assert again.headers["Idempotent-Replayed"] == "true"

    job = await stack.wait_for_job(accepted["job_id"], auth)
    assert job["status"] == "COMPLETE" and job["credits_refunded"] is False
    assert await stack.credits(user_id) == 10 - accepted["credits_required"]
    assert await _rows(stack, user_id) == (1, 1)
    assert "start_unconfirmed" in await _log_events(stack, accepted["job_id"], auth)


@pytest.mark.parametrize("stack_overrides", [RECONCILER_SOON])
async def test_a_start_temporal_cannot_confirm_and_that_never_happened_is_started_later(
    stack: Stack, faulty_api: FaultyApi, reconciler: None, stack_overrides: Any
) -> None:
    """Nothing started and nobody could tell: the reconciler starts the charged job."""
    fault = faulty_api.fault
    fault.starts, fault.reach_server, fault.describes = 1, False, 1
    user_id, auth = await stack.user(credits=10)
    key = {**auth, "Idempotency-Key": "unconfirmed-2"}

    first = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert first.status_code == 202, first.text
    accepted = first.json()

    job = await stack.wait_for_job(accepted["job_id"], auth)
    assert job["status"] == "COMPLETE" and job["credits_refunded"] is False
    events = await _log_events(stack, accepted["job_id"], auth)
    assert events.index("start_unconfirmed") < events.index("restarted")
    assert await stack.credits(user_id) == 10 - accepted["credits_required"]

    again = await faulty_api.http.post("/api/tracks", json=BODY, headers=key)
    assert again.status_code == 202 and again.json() == accepted
    assert await _rows(stack, user_id) == (1, 1)


@pytest.mark.parametrize(
    "stack_overrides", [{"webhook_allowed_hosts": ["127.0.0.1"], **RECONCILER_SOON}]
)
async def test_the_reconcilers_restart_keeps_webhook_and_search_attributes(
    stack: Stack, receiver: Receiver, reconciler: None, stack_overrides: Any
) -> None:
    """A job committed by an API that died before starting its workflow."""
    user_id, auth = await stack.user(credits=10)
    request = GenerationRequest(prompt="Lost and found", duration_s=5, seed=7)
    track, job = await stack.store.create_track(user_id, request, 1, webhook_url=receiver.url)

    done = await stack.wait_for_job(str(job.id), auth)
    assert done["status"] == "COMPLETE"
    assert "restarted" in await _log_events(stack, str(job.id), auth)

    await eventually(lambda: receiver.answered == [200], timeout_s=20, what="the webhook")
    event = json.loads(receiver.received[0][1])
    assert event["type"] == "track.completed" and event["data"]["track_id"] == str(track.id)

    handle = stack.temporal.client.get_workflow_handle(job.workflow_id)
    attributes = (await handle.describe()).typed_search_attributes
    assert attributes.get(TRACK_ID_ATTRIBUTE) == str(track.id)
    assert attributes.get(USER_ID_ATTRIBUTE) == str(user_id)
    query = f"TrackId = '{track.id}' AND UserId = '{user_id}' AND JobStatus = 'COMPLETE'"

    async def found() -> bool:
        return (await stack.temporal.client.count_workflows(query)).count == 1

    await eventually(found, timeout_s=20, what="operators to find the job by its attributes")
