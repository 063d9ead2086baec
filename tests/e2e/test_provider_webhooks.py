"""Provider webhooks through the real API on a socket, delivered by the fal and Replicate fakes.

Ledger rows are made directly here (no workflow runs), so each test is about the route:
what a verified delivery records and signals, and that anything else changes nothing.

The recipe for tests where the worker submits with webhooks (PUBLIC_BASE_URL must be the
live API, which needs its socket before the stack's settings are made):

    @pytest.fixture
    def stack_overrides(fal, replicate, api_socket):
        return hosted_settings(fal, replicate, **webhook_settings(fal, replicate, api_socket))

and take the `live_api` fixture in the test, so the API is listening for the deliveries.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from core.contracts import (
    PROVIDER_EVENT_SIGNAL,
    TRACK_WORKFLOW,
    GenerationRequest,
    ProviderEvent,
    SubmissionState,
    TrackInput,
    track_workflow_id,
)
from core.models import ProviderSubmission
from domain.tracks.submissions import SubmissionLedger
from tests.conftest import Stack, eventually
from tests.fakes import Job
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import FAL_KEY, REPLICATE_TOKEN, fal, hosted_settings, replicate
from tests.fakes.replicate_server import ReplicateFake
from tests.fakes.webhooks import (
    Forgery,
    WebhookSender,
    api_socket,
    fal_completion,
    live_api,
    replicate_prediction,
    webhook_settings,
)

__all__ = ["api_socket", "fal", "live_api", "replicate"]

PROVIDERS = ("replicate", "fal")


@pytest.fixture
def start_worker() -> bool:
    # Deliveries here are about ledger rows made by hand; no track runs.
    return False


@pytest.fixture
def stack_overrides(
    fal: FalFake, replicate: ReplicateFake, api_socket: socket.socket
) -> dict[str, Any]:
    return hosted_settings(fal, replicate, **webhook_settings(fal, replicate, api_socket))


@pytest.fixture
def fakes(fal: FalFake, replicate: ReplicateFake) -> dict[str, FalFake | ReplicateFake]:
    return {"fal": fal, "replicate": replicate}


def ledger(stack: Stack) -> SubmissionLedger:
    return SubmissionLedger(stack.store.sessions)


async def submission(
    stack: Stack, provider: str, *, run_id: str | None = None
) -> ProviderSubmission:
    """A job's ledger row, as the worker commits it before sending (SENDING, no run id)."""
    user_id, _ = await stack.user()
    request = GenerationRequest(prompt="Warm ambient pad", duration_s=5)
    track, job = await stack.store.create_track(user_id, request, 1)
    begun = await ledger(stack).begin(
        job_id=job.id, track_id=track.id, provider=provider, model=None, number=1
    )
    if run_id is not None:
        await ledger(stack).accept(begun.row.id, run_id, {})
    return begun.row


def url_for(live_api: str, provider: str, token: str) -> str:
    return f"{live_api}/api/provider-webhooks/{provider}?token={quote(token)}"


def paid_job(fake: FalFake | ReplicateFake) -> str:
    """A job on our account at the provider, as a submit whose answer was lost left it."""
    app = "fal-ai/stable-audio" if isinstance(fake, FalFake) else "meta/musicgen"
    return fake.new_job(app, {"prompt": "Warm ambient pad"}).id


def body_for(provider: str, run_id: str) -> bytes:
    return replicate_prediction(run_id) if provider == "replicate" else fal_completion(run_id)


async def deliver(
    sender: WebhookSender,
    url: str,
    provider: str,
    run_id: str,
    forgery: Forgery | None = None,
    later_by_s: int = 0,
) -> httpx.Response:
    """One delivery, its answer kept (WebhookSender.send only keeps the status)."""
    content, headers = sender.signed(
        body_for(provider, run_id), run_id=run_id, forgery=forgery, later_by_s=later_by_s
    )
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(url, content=content, headers=headers)


async def reread(stack: Stack, row: ProviderSubmission) -> ProviderSubmission:
    fresh = await ledger(stack).get(row.id)
    assert fresh is not None
    return fresh


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_signed_delivery_resolves_its_submission(
    stack: Stack, live_api: str, fakes: dict[str, Any], provider: str
) -> None:
    fake = fakes[provider]
    row = await submission(stack, provider)
    url = url_for(live_api, provider, row.token)
    run_id = paid_job(fake)

    answer = await deliver(fake.webhooks, url, provider, run_id)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "outcome": "recorded",
        "run_id": run_id,
        "state": "succeeded",
        # No workflow runs for this track: valid all the same, nothing to tell.
        "workflow_notified": False,
    }
    fresh = await reread(stack, row)
    assert (fresh.state, fresh.run_id, fresh.resolved_via) == (
        SubmissionState.RESOLVED,
        run_id,
        "webhook",
    )
    events = [e.event for e in await stack.store.events(row.job_id)]
    assert events == ["submission_resolved"]

    # Providers deliver again when unsure (signed afresh); a repeat changes nothing and
    # is still 200. The very same signed delivery again is a replay: 409, nothing changes.
    again = await deliver(fake.webhooks, url, provider, run_id, later_by_s=1)
    assert again.status_code == 200, again.text
    assert (await reread(stack, row)).updated_at >= fresh.updated_at
    assert [e.event for e in await stack.store.events(row.job_id)] == events
    content, headers = fake.webhooks.signed(body_for(provider, run_id), run_id=run_id)
    async with httpx.AsyncClient(timeout=10) as client:
        taken = await client.post(url, content=content, headers=headers)
        replayed = await client.post(url, content=content, headers=headers)
    assert (taken.status_code, replayed.status_code) == (200, 409), replayed.text
    # The secret (Replicate) or key set (fal) was fetched once and kept.
    fetches = fake.secret_fetches if provider == "replicate" else fake.jwks_fetches
    assert fetches == 1


@pytest.mark.parametrize("forgery", list(Forgery))
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_forged_delivery_changes_nothing(
    stack: Stack, live_api: str, fakes: dict[str, Any], provider: str, forgery: Forgery
) -> None:
    row = await submission(stack, provider)
    url = url_for(live_api, provider, row.token)

    answer = await deliver(fakes[provider].webhooks, url, provider, "run-forged", forgery)
    assert answer.status_code == 401, answer.text
    reason = answer.json()["detail"]
    expected = {
        Forgery.UNSIGNED: "unsigned",
        Forgery.STALE: "stale",
        Forgery.WRONG_KEY: "bad signature",
        Forgery.BAD_SIGNATURE: "bad signature",
        Forgery.TAMPERED_BODY: "bad signature",
    }[forgery]
    assert expected in reason
    fresh = await reread(stack, row)
    assert (fresh.state, fresh.run_id, fresh.resolved_via) == (SubmissionState.SENDING, None, None)
    assert await stack.store.events(row.job_id) == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_genuine_delivery_about_another_accounts_run_is_refused(
    stack: Stack, live_api: str, fakes: dict[str, Any], provider: str
) -> None:
    """Signed by the provider (fal's keys sign every customer's deliveries), but about a
    run our key cannot see: recording it would orphan our paid job."""
    row = await submission(stack, provider)
    answer = await deliver(
        fakes[provider].webhooks, url_for(live_api, provider, row.token), provider, "not-ours"
    )
    assert answer.status_code == 401, answer.text
    assert "our account" in answer.json()["detail"]
    assert (await reread(stack, row)).run_id is None
    assert await stack.store.events(row.job_id) == []


async def test_unknown_tokens_providers_and_mismatched_rows_are_404(
    stack: Stack, live_api: str, fal: FalFake, replicate: ReplicateFake
) -> None:
    replicate_row = await submission(stack, "replicate")

    unknown = await deliver(
        replicate.webhooks, url_for(live_api, "replicate", "no-such-token"), "replicate", "r-1"
    )
    assert unknown.status_code == 404, unknown.text
    assert "no replicate submission" in unknown.json()["detail"]

    # A genuine fal delivery naming a Replicate submission's token is not about that row.
    crossed = await deliver(
        fal.webhooks, url_for(live_api, "fal", replicate_row.token), "fal", "f-1"
    )
    assert crossed.status_code == 404, crossed.text
    assert (await reread(stack, replicate_row)).run_id is None

    async with httpx.AsyncClient(timeout=10) as client:
        other = await client.post(
            f"{live_api}/api/provider-webhooks/synth?token={replicate_row.token}", json={}
        )
        assert other.status_code == 404
        assert "unknown provider" in other.json()["detail"]
        missing_token = await client.post(f"{live_api}/api/provider-webhooks/fal", json={})
        assert missing_token.status_code == 422


async def test_a_second_run_for_one_submission_is_logged_as_a_duplicate(
    stack: Stack, live_api: str, replicate: ReplicateFake
) -> None:
    first, second = paid_job(replicate), paid_job(replicate)
    row = await submission(stack, "replicate", run_id=first)
    url = url_for(live_api, "replicate", row.token)

    answer = await deliver(replicate.webhooks, url, "replicate", second)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "duplicate"
    assert (await reread(stack, row)).run_id == first
    [event] = await stack.store.events(row.job_id)
    assert event.event == "duplicate_job" and event.level == "warning"
    assert event.provider == "replicate" and event.provider_run_id == second
    assert first in event.message


async def test_a_running_workflow_gets_the_event_as_a_signal(
    stack: Stack, live_api: str, fal: FalFake
) -> None:
    row = await submission(stack, "fal")
    client = stack.temporal.client
    # A workflow with the track's id on a queue no worker polls: it stays open, unrun.
    handle = await client.start_workflow(
        TRACK_WORKFLOW,
        TrackInput(
            track_id=row.track_id,
            job_id=row.job_id,
            user_id=uuid.uuid4(),
            request=GenerationRequest(prompt="p", duration_s=5),
        ),
        id=track_workflow_id(row.track_id),
        task_queue=f"nobody-{uuid.uuid4().hex[:8]}",
    )
    run_id = paid_job(fal)
    try:
        url = url_for(live_api, "fal", row.token)
        content, headers = fal.webhooks.signed(
            fal_completion(run_id, ok=False, error="model crashed"), run_id=run_id
        )
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(url, content=content, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["workflow_notified"] is True

        history = await handle.fetch_history()
        signals = [
            event.workflow_execution_signaled_event_attributes
            for event in history.events
            if event.HasField("workflow_execution_signaled_event_attributes")
        ]
        assert [s.signal_name for s in signals] == [PROVIDER_EVENT_SIGNAL]
        [sent] = await client.data_converter.decode(signals[0].input.payloads, [ProviderEvent])
        assert sent == ProviderEvent(
            token=row.token, provider="fal", run_id=run_id, state="failed", error="model crashed"
        )
    finally:
        await handle.terminate("test over")

    # Closed now: a provider's retry is still welcome, there is just nobody to tell.
    content, headers = fal.webhooks.signed(
        fal_completion(run_id, ok=False), run_id=run_id, later_by_s=1
    )
    async with httpx.AsyncClient(timeout=10) as http:
        late = await http.post(url, content=content, headers=headers)
    assert late.status_code == 200, late.text
    assert late.json()["workflow_notified"] is False


async def _submit_to_fake(
    provider: str, fake: FalFake | ReplicateFake, webhook: str, fal_key: str = FAL_KEY
) -> str:
    """A submission straight to the fake, as the worker makes it with webhooks on."""
    async with httpx.AsyncClient(timeout=10) as client:
        if provider == "fal":
            answer = await client.post(
                f"{fake.url}/fal-ai/stable-audio?fal_webhook={quote(webhook, safe='')}",
                json={"prompt": "p", "seconds_total": 5},
                headers={"Authorization": f"Key {fal_key}"},
            )
            run_id: str = answer.json()["request_id"]
        else:
            answer = await client.post(
                f"{fake.url}/v1/models/meta/musicgen/predictions",
                json={
                    "input": {"prompt": "p", "duration": 5},
                    "webhook": webhook,
                    "webhook_events_filter": ["completed"],
                },
                headers={"Authorization": f"Bearer {REPLICATE_TOKEN}"},
            )
            run_id = answer.json()["id"]
    assert answer.is_success, answer.text
    return run_id


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_fakes_deliver_when_the_job_ends(
    stack: Stack, live_api: str, fakes: dict[str, Any], provider: str
) -> None:
    """The webhook resolves a submission whose answer never reached the worker."""
    fake = fakes[provider]
    # Many polls to go, but half a second of running: delivery follows time, not polls.
    fake.script(jobs=[Job(running_polls=50, running_s=0.5)])
    row = await submission(stack, provider)
    run_id = await _submit_to_fake(provider, fake, url_for(live_api, provider, row.token))
    assert (await reread(stack, row)).run_id is None

    async def resolved() -> bool:
        return (await reread(stack, row)).run_id == run_id

    await eventually(resolved, 10, "the fake's webhook")
    assert (await reread(stack, row)).state is SubmissionState.RESOLVED
    # The fake counts a delivery once its answer is back, just after the row changed.
    await eventually(lambda: fake.webhooks_sent == 1, 10, "the delivery's answer")
    assert fake.webhooks.log[0].status == 200
    # What the webhook said, a poll now says too.
    assert fake.jobs[run_id].phase() == "succeeded"


async def test_another_fal_customers_genuine_delivery_cannot_resolve_our_submission(
    stack: Stack, live_api: str, fal: FalFake
) -> None:
    """The attack of issue 24: someone with their own fal account submits a job of theirs
    naming our pending submission's webhook URL. fal delivers it, genuinely signed with
    its shared keys and their user id. Recorded, it would orphan our paid job and make
    the track pay again at the fallback; instead it is refused and nothing changes."""
    row = await submission(stack, "fal")
    fal.add_account("attacker-fal-key")
    theirs = await _submit_to_fake(
        "fal", fal, url_for(live_api, "fal", row.token), fal_key="attacker-fal-key"
    )
    sender = fal.senders[fal.owners[theirs]]
    await eventually(lambda: sender.sent == 1, 10, "fal's delivery of their job")
    assert sender.log[0].status == 401
    fresh = await reread(stack, row)
    assert (fresh.state, fresh.run_id) == (SubmissionState.SENDING, None)
    assert await stack.store.events(row.job_id) == []
    # Our own job's delivery to the same submission is still taken.
    ours = await _submit_to_fake("fal", fal, url_for(live_api, "fal", row.token))
    await eventually(lambda: fal.webhooks_sent == 1, 10, "fal's delivery of our job")
    assert (await reread(stack, row)).run_id == ours


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_fake_deliveries_can_be_turned_off_or_forged(
    stack: Stack, live_api: str, fakes: dict[str, Any], provider: str
) -> None:
    fake = fakes[provider]
    quiet, forged = await submission(stack, provider), await submission(stack, provider)

    fake.webhooks.enabled = False
    await _submit_to_fake(provider, fake, url_for(live_api, provider, quiet.token))
    await asyncio.sleep(0.5)
    assert fake.webhooks_sent == 0

    fake.webhooks.enabled = True
    fake.webhooks.forgery = Forgery.WRONG_KEY
    await _submit_to_fake(provider, fake, url_for(live_api, provider, forged.token))
    await eventually(lambda: fake.webhooks_sent == 1, 10, "the forged delivery")
    assert fake.webhooks.log[0].status == 401
    for row in (quiet, forged):
        assert (await reread(stack, row)).run_id is None


async def test_a_body_over_the_limit_is_refused_before_anything(
    stack: Stack, live_api: str, replicate: ReplicateFake
) -> None:
    row = await submission(stack, "replicate")
    big = b'{"id": "r-1", "status": "succeeded", "logs": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    content, headers = replicate.webhooks.signed(big, run_id="r-1")
    url = httpx.URL(url_for(live_api, "replicate", row.token))
    # Only the head is sent: the refusal must come from the declared length alone, before
    # a byte of the body is read (a client that sent it all could see the connection
    # closed under it instead of the answer).
    head = "".join(
        [
            f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.netloc.decode()}\r\n",
            *(f"{name}: {value}\r\n" for name, value in headers.items()),
            f"Content-Length: {len(content)}\r\nContent-Type: application/json\r\n\r\n",
        ]
    )
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head.encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer[:300]
    assert b"x-content-type-options: nosniff" in rest.lower()
    assert (await reread(stack, row)).run_id is None


async def test_the_route_is_documented_without_user_auth(stack: Stack) -> None:
    document = (await stack.http.get("/openapi.json")).json()
    operation = document["paths"]["/api/provider-webhooks/{provider}"]["post"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["provider"]["schema"]["enum"] == ["fal", "replicate"]
    assert parameters["token"]["in"] == "query" and parameters["token"]["required"]
    assert "security" not in operation
    assert {"200", "401", "404", "503"} <= set(operation["responses"])
    assert operation["requestBody"]["required"] is True
