"""The web UI: server-rendered pages over the HTTP API, no build step.

Pages are Jinja2 templates; everything dynamic is done by /static/app.js in the browser
with the user's API token (kept in localStorage, sent as `Authorization: Bearer`). The
pages carry no user data themselves, so they need no session or cookie on the server.

    /signin           paste an API token
    /create           the create form, with the cost and balance
    /tracks           my tracks, newest first
    /tracks/{id}      live status (server-sent events), job log, player, downloads

With DEV_AUTOLOGIN=true (`soundfoundry dev` sets it) a page requested from this machine
carries the dev user's token (from `.soundfoundry/dev-token`) in a meta tag, so the dev
user is signed in without pasting anything. The pages work under the app's strict
Content-Security-Policy (`script-src 'self'`): no inline script or style, no CDN.
"""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.deps import get_services

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

# Written by `soundfoundry dev` in the directory it runs from (the API's working directory).
DEV_TOKEN_FILE = Path(".soundfoundry") / "dev-token"
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Add the pages and /static to the API app."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def dev_token(request: Request) -> str | None:
    """The dev user's token, only when DEV_AUTOLOGIN is on and the browser is this machine.

    Loopback peer *and* a loopback Host header: a request relayed by a proxy, or a page
    of another site that rebinds its DNS name to 127.0.0.1, gets nothing.
    """
    if not get_services(request).settings.dev_autologin:
        return None
    if request.client is None:
        return None
    try:
        if not ipaddress.ip_address(request.client.host).is_loopback:
            return None
    except ValueError:
        return None
    if any(name in request.headers for name in _PROXY_HEADERS):
        return None
    host = urlsplit("//" + request.headers.get("host", "")).hostname
    if host not in _LOOPBACK_HOSTS:
        return None
    try:
        token = DEV_TOKEN_FILE.read_text().strip()
    except OSError:
        return None
    return token or None


def _page(
    request: Request, template: str, page: str, title: str, status_code: int = 200, **extra: str
) -> HTMLResponse:
    token = dev_token(request)
    context = {
        "page": page,
        "title": title,
        "version": get_services(request).settings.version,
        "dev_token": token,
        **extra,
    }
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    # The app's security middleware (api/security.py) adds the CSP, script-src 'self'.
    # A page with a token in it must never be kept by a cache.
    response.headers["Cache-Control"] = "no-store" if token else "no-cache"
    return response


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/create", status_code=307)


@router.get("/signin", response_class=HTMLResponse)
async def signin(request: Request) -> HTMLResponse:
    return _page(request, "signin.html", "signin", "Sign in")


@router.get("/create", response_class=HTMLResponse)
async def create(request: Request) -> HTMLResponse:
    return _page(request, "create.html", "create", "Create a track")


@router.get("/tracks", response_class=HTMLResponse)
async def library(request: Request) -> HTMLResponse:
    return _page(request, "library.html", "library", "My tracks")


@router.get("/tracks/{track_id}", response_class=HTMLResponse)
async def track(request: Request, track_id: str) -> HTMLResponse:
    try:
        parsed = uuid.UUID(track_id)
    except ValueError:
        return _page(request, "not_found.html", "not-found", "Not found", status_code=404)
    return _page(request, "track.html", "track", "Track", track_id=str(parsed))
