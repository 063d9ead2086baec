"""The API's Prometheus metrics: a request-counting ASGI middleware and GET /metrics.

On the API port, /metrics needs `Authorization: Bearer <METRICS_TOKEN>` when a token is
set (Prometheus' `authorization` in the scrape config, as deploy/prometheus does);
without one it answers loopback clients only (a scraper on the same host), unless
METRICS_PUBLIC=true opens it. API_METRICS_PORT moves it to its own port (on API_HOST),
off the public one, for networks that keep that port internal. Each API process has its
own series.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.security import is_loopback_host
from core.metrics import API_REGISTRY, HTTP_REQUEST_DURATION, HTTP_REQUESTS, MetricsServer
from core.settings import Settings

# Requests no route matched (404s for made-up paths) share one label value, so scanners
# cannot create a series per path they try.
UNMATCHED = "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template, method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # An exception that escapes the app is answered with a 500 further out.
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = route_template(scope)
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
            HTTP_REQUEST_DURATION.labels(route=route, method=method).observe(
                time.perf_counter() - start
            )


def route_template(scope: Scope) -> str:
    # The router stores the route it matched in the scope, which this middleware shares.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


async def metrics_endpoint() -> Response:
    return Response(generate_latest(API_REGISTRY), media_type=CONTENT_TYPE_LATEST)


def token_protected(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    async def protected_metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "metrics need Authorization: Bearer <METRICS_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await metrics_endpoint()

    return protected_metrics


# A request that came through a proxy says so; its loopback peer is then the proxy, not
# the client.
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


async def loopback_only(request: Request) -> Response:
    peer = request.client.host if request.client else None
    proxied = any(name in request.headers for name in _FORWARDING_HEADERS)
    if proxied or not is_loopback_host(peer):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "metrics answer loopback clients only: set METRICS_TOKEN (then scrape with "
            "Authorization: Bearer <token>) or METRICS_PUBLIC=true",
        )
    return await metrics_endpoint()


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """The middleware that feeds the metrics, and where Prometheus reads them."""
    app.add_middleware(MetricsMiddleware)
    if settings.api_metrics_port:
        _serve_on_own_port(app, settings.api_metrics_port, settings.api_host or "0.0.0.0")
        return
    endpoint: Any = loopback_only
    if settings.metrics_token is not None:
        endpoint = token_protected(settings.metrics_token.get_secret_value())
    elif settings.metrics_public:
        endpoint = metrics_endpoint
    app.add_api_route("/metrics", endpoint, methods=["GET"], include_in_schema=False)


def _serve_on_own_port(app: FastAPI, port: int, host: str) -> None:
    # Started and stopped with the app, around the lifespan create_app gave it.
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        server = MetricsServer(port, [API_REGISTRY])
        server.start(host)
        try:
            async with inner(app_) as state:
                yield state
        finally:
            server.stop()

    app.router.lifespan_context = lifespan
