"""Security headers, the CSP on pages, CORS, the body size limit and opaque 500s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.types import Message, Receive, Scope, Send

from api.main import create_app
from api.security import BodyLimitMiddleware, content_security_policy
from core.settings import Settings
from tests.conftest import Stack

ALLOWED = "https://app.example.com"
LIMIT = 4096
BASE = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-frame-options": "DENY",
}


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    return {"cors_origins": [ALLOWED], "max_request_bytes": LIMIT}


def _has_base_headers(response: httpx.Response) -> None:
    for name, value in BASE.items():
        assert response.headers.get(name) == value, (response.url, name, response.headers)


async def test_json_responses_carry_the_security_headers(stack: Stack) -> None:
    _, auth = await stack.user()
    for path, headers in (("/api/health", {}), ("/api/me", auth), ("/api/me", {})):
        response = await stack.http.get(path, headers=headers)
        _has_base_headers(response)
        assert "content-security-policy" not in response.headers  # only pages get one
    missing = await stack.http.get("/api/tracks/not-a-uuid", headers=auth)
    assert missing.status_code == 422
    _has_base_headers(missing)


async def test_pages_get_a_csp_naming_the_storage_origin(stack: Stack) -> None:
    endpoint = stack.settings.s3_endpoint
    assert endpoint is not None
    origin = "/".join(endpoint.split("/")[:3])
    expected = (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data: {origin}; media-src 'self' {origin}; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
    pages = [
        path
        for path in ("/create", "/signin", "/tracks")
        if (await stack.http.get(path)).headers.get("content-type", "").startswith("text/html")
    ]
    assert pages, "no HTML page answered; the web UI should serve /create"
    for path in pages:
        page = await stack.http.get(path)
        assert page.headers["content-security-policy"] == expected, path
        _has_base_headers(page)


def test_csp_without_s3_names_the_apps_public_address() -> None:
    # Local links name PUBLIC_BASE_URL, wherever the page itself was opened.
    local = Settings(  # type: ignore[call-arg]
        _env_file=None, storage_backend="local", public_base_url="http://localhost:8000"
    )
    csp = content_security_policy(local)
    assert "img-src 'self' data: http://localhost:8000;" in csp
    assert "media-src 'self' http://localhost:8000;" in csp
    aws = Settings(_env_file=None, storage_backend="s3")  # type: ignore[call-arg]
    assert "media-src 'self' https://*.amazonaws.com" in content_security_policy(aws)


async def test_cors_answers_only_the_configured_origins(stack: Stack) -> None:
    allowed = await stack.http.get("/api/health", headers={"Origin": ALLOWED})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    _has_base_headers(allowed)
    other = await stack.http.get("/api/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers

    preflight = {"Access-Control-Request-Method": "POST"}
    ok = await stack.http.options("/api/tracks", headers={**preflight, "Origin": ALLOWED})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    refused = await stack.http.options(
        "/api/tracks", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_bodies_over_the_limit_are_413(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=100)
    big = {"prompt": "x" * 400, "duration_s": 5, "lyrics": "la " * 2000}

    declared = await stack.http.post("/api/tracks", json=big, headers=auth)
    assert declared.status_code == 413
    assert declared.json() == {"detail": f"request body is larger than the {LIMIT} byte limit"}
    _has_base_headers(declared)

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: only counting what arrives can catch it.
        payload = httpx.Request("POST", "/", json=big).content
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    streamed = await stack.http.post(
        "/api/tracks",
        content=chunks(),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert "byte limit" in streamed.json()["detail"]
    assert await stack.credits(user_id) == 100

    small = await stack.http.post(
        "/api/tracks", json={"prompt": "fits", "duration_s": 5}, headers=auth
    )
    assert small.status_code == 201


async def test_a_lying_content_length_is_still_cut_off() -> None:
    """The middleware alone: Content-Length says 10 bytes, the stream brings 3 chunks of 2000."""
    read: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            read.append(total)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [b"x" * 2000, b"x" * 2000, b"x" * 2000]

    async def receive() -> Message:
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-length", b"10")]}
    await BodyLimitMiddleware(app, max_bytes=LIMIT)(scope, receive, send)
    assert sent[0]["status"] == 413
    assert read == [2000, 4000]  # the app never saw the chunk that went over


def test_the_default_limit_leaves_room_for_a_1_mb_cover() -> None:
    default = Settings(_env_file=None).max_request_bytes  # type: ignore[call-arg]
    assert default == 2 * 1024 * 1024
    assert default > 1_000_000 * 1.1  # the SVG inside JSON, escaped


async def test_unexpected_errors_reach_the_client_as_a_bare_500(stack: Stack) -> None:
    app: FastAPI = create_app(stack.settings)

    @app.get("/api/test-only/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail from deep inside: /srv/app/core/db.py line 42")

    @app.get("/test-only/page", response_class=HTMLResponse)
    async def page() -> str:
        return "<!doctype html><title>t</title><p>test page</p>"

    async with (
        LifespanManager(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://testserver",
        ) as http,
    ):
        response = await http.get("/api/test-only/boom")
        assert response.status_code == 500
        assert response.content == b'{"detail":"internal error"}'
        _has_base_headers(response)
        html = await http.get("/test-only/page")
        assert html.headers["content-security-policy"].startswith("default-src 'self'")
