"""Webhooks: signed events when a job ends, retried by Temporal, safe targets only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from domain.webhooks.outgoing import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.conftest import Stack, eventually


@dataclass
class Receiver:
    """A loopback webhook receiver that fails its first `failures` deliveries."""

    failures: int = 0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers.items()), body))
            code = 500 if len(state.answered) < state.failures else 200
            state.answered.append(code)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}/hooks/soundfoundry"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    return {"webhook_allowed_hosts": ["127.0.0.1"]}


async def test_completed_job_is_delivered_signed_after_receiver_fails_twice(
    stack: Stack, receiver: Receiver
) -> None:
    receiver.failures = 2
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=6, webhook_url=receiver.url)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "COMPLETE"
    await eventually(lambda: receiver.answered[-1:] == [200], timeout_s=30, what="delivery")
    assert receiver.answered == [500, 500, 200]

    secret = (await stack.http.get("/api/me/webhook", headers=auth)).json()["secret"]
    event_ids = set()
    for headers, body in receiver.received:
        timestamp = int(headers[TIMESTAMP_HEADER])
        assert verify(secret, timestamp, body, headers[SIGNATURE_HEADER])
        assert not verify("someone-elses-secret", timestamp, body, headers[SIGNATURE_HEADER])
        event_ids.add(headers[EVENT_ID_HEADER])
    assert len(event_ids) == 1, "retries must carry the same event id"
    event = json.loads(receiver.received[-1][1])
    assert event["type"] == "track.completed" and event["id"] in event_ids
    assert event["data"]["track_id"] == created["track_id"]
    assert event["data"]["status"] == "COMPLETE" and event["data"]["provider"] == "synth"

    logs = (await stack.http.get(f"/api/jobs/{created['job_id']}/logs", headers=auth)).json()
    attempts = [(e["event"], e["attempt"]) for e in logs if e["event"].startswith("webhook")]
    assert attempts == [("webhook.failed", 1), ("webhook.failed", 2), ("webhook", 3)]


@pytest.mark.parametrize(
    "stack_overrides",
    [{"webhook_allowed_hosts": ["127.0.0.1"], "music_providers": ["fal"]}],
)
async def test_failed_job_is_announced(
    stack: Stack, receiver: Receiver, stack_overrides: Any
) -> None:
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=6, webhook_url=receiver.url)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "FAILED"
    await eventually(lambda: receiver.answered == [200], timeout_s=20, what="delivery")
    event = json.loads(receiver.received[0][1])
    assert event["type"] == "track.failed"
    assert event["data"]["error_code"] == "no_capable_provider"


@pytest.mark.parametrize(
    "stack_overrides", [{"webhook_allowed_hosts": ["127.0.0.1"], "synth_pace": 1.0}]
)
async def test_cancelled_job_is_announced(
    stack: Stack, receiver: Receiver, stack_overrides: Any
) -> None:
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=20, webhook_url=receiver.url)
    await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")
    await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "CANCELLED"
    await eventually(lambda: receiver.answered == [200], timeout_s=20, what="delivery")
    assert json.loads(receiver.received[0][1])["type"] == "track.cancelled"


@pytest.mark.parametrize("stack_overrides", [{}])
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "http or https"),
        ("http://127.0.0.1:9/hook", "non-public address"),
        ("http://localhost:9/hook", "non-public address"),
        ("http://10.1.2.3/hook", "non-public address"),
        ("http://192.168.0.10/hook", "non-public address"),
        ("http://169.254.169.254/latest/meta-data", "non-public address"),
        ("http://[::1]:9/hook", "non-public address"),
        ("http://user:pw@example.com/hook", "credentials"),
    ],
)
async def test_unsafe_webhook_targets_are_refused_up_front(
    stack: Stack, stack_overrides: Any, url: str, reason: str
) -> None:
    user_id, auth = await stack.user(credits=20)
    response = await stack.http.post(
        "/api/tracks",
        json={"prompt": "hook", "duration_s": 6, "webhook_url": url},
        headers=auth,
    )
    assert response.status_code == 422, response.text
    assert reason in response.text
    assert await stack.credits(user_id) == 20  # nothing reserved, nothing started


async def test_webhook_secret_can_be_rotated(stack: Stack) -> None:
    _, auth = await stack.user()
    first = (await stack.http.get("/api/me/webhook", headers=auth)).json()
    assert first["secret"].startswith("whsec_")
    assert (await stack.http.get("/api/me/webhook", headers=auth)).json() == first
    rotated = (await stack.http.post("/api/me/webhook/rotate", headers=auth)).json()
    assert rotated["secret"] != first["secret"]
    assert (await stack.http.get("/api/me/webhook")).status_code == 401
