"""The API's Prometheus metrics: a request-counting ASGI middleware and GET /metrics."""

from __future__ import annotations

import time

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.metrics import API_REGISTRY, HTTP_REQUEST_DURATION, HTTP_REQUESTS

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


def install_metrics(app: FastAPI) -> None:
    """GET /metrics (no auth, for Prometheus) and the middleware that feeds it."""
    app.add_middleware(MetricsMiddleware)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
