"""Faults that must never be a 500: out-of-range paging, a database outage, cancel races.

Each runs on the real stack. The outage test stops and restarts a Postgres cluster of its
own, so the suite's shared cluster (and everyone else's tests) never notice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from temporalio.client import CancelWorkflowInput, Interceptor, OutboundInterceptor
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Services
from api.main import create_app
from api.schemas import MAX_PAGE_OFFSET
from api.temporal import TemporalGateway
from core.contracts import GenerationRequest, JobStatus
from domain.credits import credits_required
from tests.conftest import Stack, _assemble, base_settings, eventually
from tests.services import PostgresCluster, TemporalDevServer, VersityGateway

TRACK = {"prompt": "Warm ambient pad", "duration_s": 6}


# -- paging bounds ---------------------------------------------------------------------
async def test_out_of_range_paging_is_a_422_not_a_500(stack: Stack) -> None:
    _, auth = await stack.user()
    for query in (f"offset={2**63}", f"offset={10**40}", f"offset={MAX_PAGE_OFFSET + 1}"):
        response = await stack.http.get(f"/api/tracks?{query}", headers=auth)
        assert response.status_code == 422, (query, response.text)
        assert response.json()["detail"][0]["loc"] == ["query", "offset"]
    for query in ("limit=0", f"limit={2**64}", "offset=-1"):
        assert (await stack.http.get(f"/api/tracks?{query}", headers=auth)).status_code == 422
    deepest = await stack.http.get(f"/api/tracks?offset={MAX_PAGE_OFFSET}", headers=auth)
    assert deepest.status_code == 200
    assert deepest.json() == {"items": [], "total": 0, "limit": 20, "offset": MAX_PAGE_OFFSET}


# -- a database outage -------------------------------------------------------------------
def _pg_ctl(cluster: PostgresCluster, *args: str) -> None:
    assert cluster.tmpdir is not None
    cluster._pg("pg_ctl", *args, "--pgdata", str(cluster._data), "--wait", what=f"pg_ctl {args[0]}")


def stop_postgres(cluster: PostgresCluster) -> None:
    # `fast`: what an operator's restart does; open sessions are terminated mid-query.
    _pg_ctl(cluster, "stop", "--mode", "fast")


def start_postgres(cluster: PostgresCluster) -> None:
    assert cluster.tmpdir is not None
    log = str(cluster.tmpdir / "postgres.log")
    _pg_ctl(cluster, "start", "--log", log, "-o", f"-p {cluster.port}")


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PostgresCluster]:
    with PostgresCluster("outage") as cluster:
        yield cluster


@pytest_asyncio.fixture
async def outage_stack(
    private_pg: PostgresCluster,
    s3_gateway: VersityGateway,
    s3_bucket: str,
    temporal_server: TemporalDevServer,
) -> AsyncIterator[Stack]:
    settings = base_settings(
        temporal_server,
        database_url=private_pg.create_database(f"t_{uuid.uuid4().hex[:12]}"),
        storage_backend="s3",
        s3_endpoint=s3_gateway.endpoint,
        s3_access_key=s3_gateway.access_key,
        s3_secret_key=s3_gateway.secret_key,
        s3_bucket=s3_bucket,
    )
    # No worker: the jobs only have to be written, not rendered.
    async for built in _assemble(settings, temporal_server, False):
        yield built


def _is_outage_answer(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and int(response.headers["retry-after"]) > 0
        and "database" in response.json()["detail"]
    )


async def test_database_outage_is_a_503_with_retry_after_and_nothing_half_written(
    outage_stack: Stack, private_pg: PostgresCluster
) -> None:
    stack = outage_stack
    user_id, auth = await stack.user(credits=100)
    first = await stack.create_track(auth, **TRACK)
    balance = await stack.credits(user_id)
    assert balance == 100 - first["credits_required"]

    # Hold the user's row so the next create stops inside its transaction, after the
    # rate limit and idempotency work and before its commit; then Postgres goes away.
    database = stack.settings.database_url.rsplit("/", 1)[-1]
    holder = await asyncpg.connect(private_pg.dsn(database))
    down = False
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
        create = asyncio.create_task(stack.http.post("/api/tracks", json=TRACK, headers=auth))

        async def create_is_waiting_on_the_lock() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return bool(waiting)

        await eventually(create_is_waiting_on_the_lock, what="the create to wait on the row")
        await asyncio.to_thread(stop_postgres, private_pg)
        down = True
        cut_off = await create
        assert _is_outage_answer(cut_off), cut_off.text

        # While it is down every route that needs it says so, the same way.
        for method, path, body in (
            ("POST", "/api/tracks", TRACK),
            ("GET", "/api/me", None),
            ("GET", "/api/tracks", None),
            ("GET", f"/api/jobs/{first['job_id']}", None),
        ):
            answer = await stack.http.request(method, path, json=body, headers=auth)
            assert _is_outage_answer(answer), (method, path, answer.status_code, answer.text)
            assert answer.headers["x-content-type-options"] == "nosniff"
    finally:
        if down:
            await asyncio.to_thread(start_postgres, private_pg)
        holder.terminate()

    # Back up: the same API process answers again, and the cut-off create left nothing.
    async def api_answers() -> bool:
        return (await stack.http.get("/api/me", headers=auth)).status_code == 200

    await eventually(api_answers, what="the API to reconnect")
    assert await stack.credits(user_id) == balance  # nothing reserved by the failed create
    page = (await stack.http.get("/api/tracks", headers=auth)).json()
    assert [item["id"] for item in page["items"]] == [first["track_id"]]
    again = await stack.create_track(auth, **TRACK)
    assert await stack.credits(user_id) == balance - again["credits_required"]


# -- cancel races --------------------------------------------------------------------------
@pytest.mark.parametrize("start_worker", [False])
async def test_cancel_of_a_queued_job_without_a_workflow_cancels_and_refunds(
    stack: Stack,
) -> None:
    """A job whose start was never confirmed (QUEUED, no workflow) is cancelled directly."""
    user_id, auth = await stack.user(credits=50)
    request = GenerationRequest(
        prompt="Never started", duration_s=30, has_vocals=False, style_strength=0.5, seed=7
    )
    cost = credits_required(request.duration_s, request.has_vocals)
    _, job = await stack.store.create_track(user_id, request, cost)
    assert await stack.credits(user_id) == 50 - cost

    response = await stack.http.post(f"/api/jobs/{job.id}/cancel", headers=auth)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == JobStatus.CANCELLED
    assert response.json()["credits_refunded"] is True
    assert await stack.credits(user_id) == 50

    logs = (await stack.http.get(f"/api/jobs/{job.id}/logs", headers=auth)).json()
    assert [entry["event"] for entry in logs] == ["cancelled"]
    again = await stack.http.post(f"/api/jobs/{job.id}/cancel", headers=auth)
    assert again.status_code == 409
    assert await stack.credits(user_id) == 50  # refunded once
    # Nothing was started on the way.
    client = stack.temporal.client
    with pytest.raises(RPCError) as missing:
        await client.get_workflow_handle(job.workflow_id).describe()
    assert missing.value.status is RPCStatusCode.NOT_FOUND


class _CancelArrivesLate(Interceptor):
    """Holds a cancel request until `ready` is set: the job finishes in between."""

    def __init__(self, ready: asyncio.Event) -> None:
        self.ready = ready

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        ready = self.ready

        class Late(OutboundInterceptor):
            async def cancel_workflow(self, input: CancelWorkflowInput) -> None:
                await ready.wait()
                await super().cancel_workflow(input)

        return Late(next)


async def test_cancel_racing_the_job_completing_is_a_409(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=50)
    app = create_app(stack.settings)
    finished = asyncio.Event()
    async with LifespanManager(app):
        services: Services = app.state.services
        services.temporal = TemporalGateway(stack.settings, [_CancelArrivesLate(finished)])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            created = (await http.post("/api/tracks", json=TRACK, headers=auth)).json()
            # The cancel passes its "still running?" check, then waits at Temporal's door.
            cancel = asyncio.create_task(
                http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
            )
            job = await stack.wait_for_job(created["job_id"], auth)
            assert job["status"] == JobStatus.COMPLETE, job
            assert not cancel.done()

            async def workflow_closed() -> bool:
                handle = stack.temporal.client.get_workflow_handle(created["workflow_id"])
                return (await handle.describe()).close_time is not None

            await eventually(workflow_closed, what="the workflow to close")
            finished.set()
            response = await cancel
    assert response.status_code == 409, response.text
    assert "COMPLETE" in response.json()["detail"]
    final = await stack.wait_for_job(created["job_id"], auth)
    assert final["status"] == JobStatus.COMPLETE and final["credits_refunded"] is False
    assert await stack.credits(user_id) == 50 - created["credits_required"]
