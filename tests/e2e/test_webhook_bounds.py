"""A webhook target chooses its answer, so no answer may cost the worker: the body is never
read (an endless one is left after its status line), and the targets a user can name
are bounded (public addresses on allowed ports; cloud metadata addresses never).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from domain.webhooks.outgoing import WebhookTargetRejected, check_target, webhook_policy
from tests.conftest import Stack, eventually
from tests.fakes.hostile_http import CHUNK, Answer, HostileServer, hostile_server

PUBLIC_ADDRESS = "192.88.99.1"  # global on every Python; never connected to here


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def deliver_to(stack: Stack, server: HostileServer) -> tuple[list[dict[str, Any]], int]:
    """Make a track whose webhook is `server`; its job log once the delivery ended, and
    the most the process's RSS grew while it ran."""
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=5, webhook_url=f"{server.url}/hook")
    job_id = created["job_id"]
    baseline = rss_bytes()
    peak = baseline

    async def log() -> list[dict[str, Any]]:
        response = await stack.http.get(f"/api/jobs/{job_id}/logs", headers=auth)
        return [e for e in response.json() if e["event"].startswith("webhook")]

    async def ended() -> bool:
        nonlocal peak
        peak = max(peak, rss_bytes())
        return bool(await log())

    await eventually(ended, timeout_s=60, what="the delivery's outcome in the job log")
    return await log(), peak - baseline


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    return {"webhook_allowed_hosts": ["127.0.0.1"]}


@pytest.mark.parametrize(("status", "event"), [(200, "webhook"), (500, "webhook.failed")])
async def test_an_endless_answer_is_never_read(
    embedded_stack: Stack, status: int, event: str
) -> None:
    answers = {"/hook": Answer(status, endless=True)}
    async with hostile_server(answers) as server:
        entries, grew = await deliver_to(embedded_stack, server)
        await asyncio.wait_for(server.hung_up.wait(), 10)
    assert entries[0]["event"] == event, entries
    if status == 500:
        assert "webhook answered 500" in entries[0]["message"]
    # Only what socket buffers took before the worker hung up, never the body itself
    # (the server stops at 512 MiB; reading it all cost ~2x that in RSS before).
    assert server.body_bytes_sent < 32 * CHUNK
    assert grew < 96 * CHUNK, f"RSS grew {grew / CHUNK:.0f} MiB"


async def test_cloud_metadata_addresses_are_refused_up_front(embedded_stack: Stack) -> None:
    user_id, auth = await embedded_stack.user(credits=20)
    for url in ("http://168.63.129.16/machine", "http://169.254.169.254/latest/meta-data"):
        response = await embedded_stack.http.post(
            "/api/tracks",
            json={"prompt": "hook", "duration_s": 5, "webhook_url": url},
            headers=auth,
        )
        assert response.status_code == 422, response.text
        assert "non-public address" in response.text
    assert await embedded_stack.credits(user_id) == 20


async def public(host: str, port: int) -> list[str]:
    return [PUBLIC_ADDRESS]


@pytest.mark.parametrize(
    ("url", "allowed_ports", "refused"),
    [
        ("https://hooks.example/h", [], None),
        ("http://hooks.example/h", [], None),
        ("http://hooks.example:8080/h", [], "port 8080 is not allowed"),
        ("https://hooks.example:6379/h", [], "port 6379 is not allowed"),
        ("http://hooks.example:8080/h", [8080], None),
        ("http://hooks.example:22/h", [8080], "port 22 is not allowed"),
    ],
)
async def test_webhook_ports_are_80_443_and_those_allowed(
    url: str, allowed_ports: list[int], refused: str | None
) -> None:
    settings = Settings(_env_file=None, webhook_allowed_ports=allowed_ports)  # type: ignore[call-arg]
    policy = webhook_policy(settings, public)
    if refused is None:
        await check_target(url, policy)
        return
    with pytest.raises(WebhookTargetRejected, match=refused):
        await check_target(url, policy)


def test_allowed_ports_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_ALLOWED_PORTS", "8080, 8443")
    assert Settings(_env_file=None).webhook_allowed_ports == [8080, 8443]  # type: ignore[call-arg]
