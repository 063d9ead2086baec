"""What the web UI needs from the API: /api/me, peaks, the job event stream, the pages.

The browser itself is in tests/e2e/browser/; these check the HTTP side directly.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from api.main import create_app
from api.routes import job_events
from core.contracts import GenerationRequest, JobStatus
from soundfoundry.devstack import dev_environment
from tests.conftest import Stack, eventually
from tests.live_server import LiveServer, bound_socket

FORM_FIELDS = ("prompt", "duration_s", "has_vocals", "style_strength", "lyrics")


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Events of a text/event-stream body: [{event, data, id}], comments as {comment}."""
    events: list[dict[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event: dict[str, Any] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                event["comment"] = line[1:].strip()
            else:
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")
        if "data" in event:
            event["data"] = json.loads(event["data"])
        events.append(event)
    return events


async def test_me_is_the_tokens_user_with_a_fresh_balance(embedded_stack: Stack) -> None:
    user_id, auth = await embedded_stack.user(credits=40)
    me = (await embedded_stack.http.get("/api/me", headers=auth)).json()
    assert {k: me[k] for k in ("id", "plan", "credits")} == {
        "id": str(user_id),
        "plan": "free",
        "credits": 40,
    }
    await embedded_stack.create_track(auth, duration_s=30)
    me = (await embedded_stack.http.get("/api/me", headers=auth)).json()
    assert me["credits"] == 35
    assert (await embedded_stack.http.get("/api/me")).status_code == 401


async def test_track_exposes_the_waveform_peaks(embedded_stack: Stack) -> None:
    _, auth = await embedded_stack.user()
    created = await embedded_stack.create_track(auth, duration_s=5)
    await embedded_stack.wait_for_job(created["job_id"], auth)
    track = (
        await embedded_stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)
    ).json()
    peaks = track["audio"]["peaks"]
    assert len(peaks) == 400 and all(0 <= p <= 1 for p in peaks) and max(peaks) > 0.1


async def test_job_events_stream_status_log_and_done(embedded_stack: Stack) -> None:
    _, auth = await embedded_stack.user()
    created = await embedded_stack.create_track(auth, duration_s=5)
    job_id = created["job_id"]
    await embedded_stack.wait_for_job(job_id, auth)

    # EventSource cannot send headers, so ?token= works as well as the header.
    token = auth["Authorization"].removeprefix("Bearer ")
    url = f"/api/jobs/{job_id}/events"
    for headers, params in ((auth, {}), ({}, {"token": token})):
        response = await embedded_stack.http.get(url, headers=headers, params=params)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        events = parse_sse(response.text)
        assert events[0] == {"retry": str(job_events.RETRY_MS)}
        status = [e for e in events if e.get("event") == "status"]
        logs = [e for e in events if e.get("event") == "log"]
        assert status[-1]["data"] == {
            "status": "COMPLETE",
            "step": "done",
            "progress": 1.0,
            "attempts": status[-1]["data"]["attempts"],
            "error_code": None,
            "error_message": None,
        }
        api_log = (await embedded_stack.http.get(f"/api/jobs/{job_id}/logs", headers=auth)).json()
        assert [e["data"]["message"] for e in logs] == [e["message"] for e in api_log]
        assert all(int(e["id"]) for e in logs)
        assert events[-1] == {"event": "done", "data": {"status": "COMPLETE"}}

    # A reconnect (Last-Event-ID) gets only what it has not seen.
    first_ids = [int(e["id"]) for e in logs]
    resumed = await embedded_stack.http.get(
        f"/api/jobs/{job_id}/events", headers={**auth, "Last-Event-ID": str(first_ids[-2])}
    )
    resumed_logs = [e for e in parse_sse(resumed.text) if e.get("event") == "log"]
    assert [int(e["id"]) for e in resumed_logs] == first_ids[-1:]


async def test_job_events_need_the_owners_token(embedded_stack: Stack) -> None:
    _, auth = await embedded_stack.user()
    created = await embedded_stack.create_track(auth, duration_s=5)
    url = f"/api/jobs/{created['job_id']}/events"
    _, stranger = await embedded_stack.user()
    assert (await embedded_stack.http.get(url)).status_code == 401
    assert (await embedded_stack.http.get(url, params={"token": "sf_nope"})).status_code == 401
    assert (await embedded_stack.http.get(url, headers=stranger)).status_code == 404
    # The header wins over a bad query token.
    assert (
        await embedded_stack.http.get(url, headers=stranger, params={"token": "x"})
    ).status_code == 404


async def test_a_live_stream_beats_and_stops_when_the_client_leaves(
    embedded_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_events, "HEARTBEAT_S", 0.4)
    user_id, auth = await embedded_stack.user()
    # A job that stays QUEUED: no workflow is started for it.
    request = GenerationRequest(prompt="quiet", duration_s=5, seed=1)
    _, job = await embedded_stack.store.create_track(user_id, request, 1)
    token = auth["Authorization"].removeprefix("Bearer ")

    sock = bound_socket()
    with LiveServer(create_app(embedded_stack.settings), sock) as server:
        url = f"{server.url}/api/jobs/{job.id}/events?token={token}"
        seen: list[str] = []
        async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", url) as stream:
            async for line in stream.aiter_lines():
                seen.append(line)
                if line.startswith(": heartbeat"):
                    break
        assert "event: status" in seen
        status_line = seen[seen.index("event: status") + 1]
        assert json.loads(status_line.removeprefix("data: "))["status"] == JobStatus.QUEUED
        # The client has gone: the server stops polling for it.
        await eventually(lambda: job.id not in job_events.open_streams, 10, "stream closed")


def test_the_token_query_is_redacted_from_the_access_log() -> None:
    import logging

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/api/jobs/x/events?a=1&token=sf_secret&b=2", "1.1", 200),
        None,
    )  # fmt: skip
    for log_filter in logging.getLogger("uvicorn.access").filters:
        assert isinstance(log_filter, logging.Filter)
        log_filter.filter(record)
    assert "sf_secret" not in record.getMessage()
    assert "token=[redacted]&b=2" in record.getMessage()


async def test_pages_are_server_rendered_with_a_strict_script_policy(
    embedded_stack: Stack,
) -> None:
    http = embedded_stack.http
    for path in ("/signin", "/create", "/tracks", f"/tracks/{secrets.token_hex(16)}"):
        response = await http.get(path)
        assert response.status_code in (200, 404), path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        html = response.text
        # No inline script or handler, nothing from another host.
        assert all('src="/static/' in tag for tag in re.findall(r"<script[^>]*>", html))
        assert not re.search(r"\son[a-z]+=", html)
        assert not re.search(r'(src|href)="(https?:)?//', html)
        assert "sf-dev-token" not in html
    create = (await http.get("/create")).text
    for name in FORM_FIELDS:
        assert f'name="{name}"' in create
    assert (await http.get("/")).headers["location"] == "/create"
    assert (await http.get("/static/app.js")).status_code == 200
    assert (await http.get("/static/style.css")).status_code == 200
    assert (await http.get("/tracks/not-a-uuid")).status_code == 404


DEV_LOGIN_SECRET = "per-run-dev-login-secret-0123456789"


@pytest.mark.parametrize(
    "stack_overrides",
    [{"dev_autologin": True, "api_host": "127.0.0.1", "dev_login_secret": DEV_LOGIN_SECRET}],
)
async def test_dev_autologin_only_for_loopback_browsers(
    embedded_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "dev-token"
    token_file.write_text("sf_dev_token_value\n")
    monkeypatch.setattr("api.web.DEV_TOKEN_FILE", token_file)
    http = embedded_stack.http  # the ASGI client's address is 127.0.0.1

    # The printed sign-in link: exchanged for a cookie, then the page carries the token.
    signin = await http.get(f"/?login={DEV_LOGIN_SECRET}", headers={"Host": "localhost:8000"})
    assert signin.status_code == 303 and signin.headers["location"] == "/create"
    assert DEV_LOGIN_SECRET not in signin.headers["set-cookie"]
    local = await http.get("/create", headers={"Host": "localhost:8000"})
    assert '<meta name="sf-dev-token" content="sf_dev_token_value">' in local.text
    assert local.headers["cache-control"] == "no-store"
    assert "sf_dev_token_value" in (await http.get("/signin", headers={"Host": "127.0.0.1"})).text

    http.cookies.clear()  # loopback alone, without the secret, gets nothing
    assert "sf-dev-token" not in (await http.get("/create", headers={"Host": "localhost"})).text
    for headers in (
        {"Host": "evil.example"},  # DNS rebinding: a foreign name pointing at 127.0.0.1
        {"Host": "localhost", "X-Forwarded-For": "203.0.113.9"},  # relayed by a proxy
        {"Host": "localhost", "Forwarded": "for=203.0.113.9"},
    ):
        page = await http.get(f"/create?login={DEV_LOGIN_SECRET}", headers=headers)
        assert "sf-dev-token" not in page.text, headers

    # A browser on another machine, even one that calls the server "localhost".
    app = create_app(embedded_stack.settings)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://localhost") as remote,
    ):
        assert "sf-dev-token" not in (await remote.get(f"/create?login={DEV_LOGIN_SECRET}")).text

    token_file.unlink()
    page = await http.get(
        f"/?login={DEV_LOGIN_SECRET}", headers={"Host": "localhost"}, follow_redirects=True
    )
    assert page.status_code == 200 and "sf-dev-token" not in page.text


async def test_dev_autologin_is_off_unless_set(embedded_stack: Stack) -> None:
    assert embedded_stack.settings.dev_autologin is False
    response = await embedded_stack.http.get("/create", headers={"Host": "localhost"})
    assert "sf-dev-token" not in response.text


def test_soundfoundry_dev_turns_autologin_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEV_AUTOLOGIN", raising=False)
    assert dev_environment(8000, 7233, 8233)["DEV_AUTOLOGIN"] == "true"
    monkeypatch.setenv("DEV_AUTOLOGIN", "false")  # an explicit setting still wins
    assert dev_environment(8000, 7233, 8233)["DEV_AUTOLOGIN"] == "false"


async def test_sse_endpoint_is_documented(embedded_stack: Stack) -> None:
    spec = (await embedded_stack.http.get("/openapi.json")).json()
    operation = spec["paths"]["/api/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert "token" in {p["name"] for p in operation["parameters"]}
    assert "/create" not in spec["paths"]  # pages are not API


async def test_the_stream_token_stays_out_of_traces(embedded_stack: Stack) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from core.telemetry import configure_tracing

    exporter = InMemorySpanExporter()
    if (
        configure_tracing("soundfoundry-test", span_processors=[SimpleSpanProcessor(exporter)])
        is None
    ):
        pytest.skip("OTEL_SDK_DISABLED is set")
    try:
        _, auth = await embedded_stack.user()
        created = await embedded_stack.create_track(auth, duration_s=5)
        await embedded_stack.wait_for_job(created["job_id"], auth)
        token = auth["Authorization"].removeprefix("Bearer ")
        response = await embedded_stack.http.get(
            f"/api/jobs/{created['job_id']}/events", params={"token": token}
        )
        assert response.status_code == 200
        spans = exporter.get_finished_spans()
        assert spans  # tracing is on: the other requests were traced
        assert not any(token in json.dumps(dict(s.attributes or {})) for s in spans)
    finally:
        exporter.shutdown()
