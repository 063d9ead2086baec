"""Web hygiene for every response: security headers, a CSP on HTML, a request body limit,
and the settings the API refuses to start with.

Both are plain ASGI middleware so they also cover streamed responses (server-sent
events, file downloads) without buffering them.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings

# On every response, HTML or not.
BASE_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "X-Frame-Options": "DENY",
}


def storage_origin(settings: Settings) -> str | None:
    """Where signed audio and cover links point, for img-src and media-src."""
    if settings.storage_backend != "s3":
        # Local files are served by this app, but their links name PUBLIC_BASE_URL: a
        # page opened at another address of the app (127.0.0.1 for localhost) must be
        # allowed to load from it too.
        parts = urlsplit(settings.public_base_url)
        return f"{parts.scheme}://{parts.netloc}"
    public = settings.s3_public_endpoint or settings.s3_endpoint
    if public:
        parts = urlsplit(public)
        return f"{parts.scheme}://{parts.netloc}"
    # AWS itself: presigned links use the bucket's regional or global host name.
    return "https://*.amazonaws.com"


def content_security_policy(settings: Settings) -> str:
    extra = storage_origin(settings)
    media = f" {extra}" if extra else ""
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' data:{media}",
            f"media-src 'self'{media}",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        )
    )


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_problems(settings: Settings) -> list[str]:
    """Settings the API must not serve with; each entry says which variable to change."""
    problems = []
    if secret_problem := settings.secret_key_problem():
        problems.append(secret_problem)
    if settings.dev_autologin:
        if not is_loopback_host(settings.api_host):
            problems.append(
                "DEV_AUTOLOGIN=true needs the API to listen on loopback "
                f"(API_HOST is {settings.api_host or 'unset'}); turn DEV_AUTOLOGIN off"
            )
        if settings.dev_login_secret is None:
            problems.append("DEV_AUTOLOGIN=true needs DEV_LOGIN_SECRET (soundfoundry dev sets it)")
        if "*" in settings.cors_origins:
            problems.append("DEV_AUTOLOGIN=true cannot be combined with CORS_ORIGINS=*")
    return problems


class UnsafeSettings(RuntimeError):
    pass


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, csp: str, hsts_seconds: int = 0) -> None:
        self.app = app
        self.csp = csp
        self.headers = dict(BASE_HEADERS)
        if hsts_seconds:
            self.headers["Strict-Transport-Security"] = f"max-age={hsts_seconds}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
                if headers.get("content-type", "").startswith("text/html"):
                    # A page may tighten its own policy; otherwise it gets ours.
                    headers.setdefault("Content-Security-Policy", self.csp)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyTooLarge(HTTPException):
    # An HTTPException, so FastAPI passes it through its body parsing (which turns other
    # errors into 400) and its exception middleware answers 413 with the detail.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than the {max_bytes} byte limit")


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`, counted as it arrives.

    A declared Content-Length over the limit is refused before the app runs; a chunked
    body (or one whose length lies) is cut off as soon as the running total passes it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)
        except Exception as exc:
            # Task groups (streaming responses, some middleware) wrap it; find it inside.
            if started or not _caused_by_body_limit(exc):
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": BodyTooLarge(self.max_bytes).detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _caused_by_body_limit(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_caused_by_body_limit(inner) for inner in exc.exceptions)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BodyTooLarge):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def install(app: FastAPI, settings: Settings) -> None:
    """Add both middlewares; call it after CORS so the headers wrap everything.

    Refuses unsafe settings first (UnsafeSettings), however the app is started."""
    if problems := startup_problems(settings):
        raise UnsafeSettings("; ".join(problems))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(
        SecurityHeadersMiddleware,
        csp=content_security_policy(settings),
        hsts_seconds=settings.hsts_seconds,
    )
