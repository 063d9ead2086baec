"""The web UI: server-rendered pages over the HTTP API, no build step.

Pages are Jinja2 templates; everything dynamic is done by /static/app.js in the browser
with the user's API token (kept in localStorage, sent as `Authorization: Bearer`). The
pages carry no user data themselves, so they need no session or cookie on the server.

    /signin           paste an API token
    /create           the create form, with the cost and balance
    /tracks           my tracks, newest first
    /tracks/{id}      live status (server-sent events), job log, player, downloads

With DEV_AUTOLOGIN=true (`soundfoundry dev` sets it, with the API on loopback) the sign-in
link `soundfoundry dev` prints, `/?login=<DEV_LOGIN_SECRET>` (a fresh secret each run, as
notebook servers do), is exchanged once for an HttpOnly cookie and a redirect that drops
the secret from the address bar; pages then carry the dev user's token (from
`.soundfoundry/dev-token`) in a meta tag. Without the secret or its cookie there is no
token, even from loopback, so a proxy or tunnel on this machine cannot hand it out.
The pages work under the app's strict Content-Security-Policy (`script-src 'self'`): no
inline script or style, no CDN.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import uuid
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.deps import get_services
from core.settings import Settings

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

# Written by `soundfoundry dev` in the directory it runs from (the API's working directory).
DEV_TOKEN_FILE = Path(".soundfoundry") / "dev-token"
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")
DEV_LOGIN_COOKIE = "sf_dev_login"
DEV_LOGIN_QUERY = "login"

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Add the pages and /static to the API app."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _dev_cookie_value(secret: str) -> str:
    # Not the secret itself, so the cookie cannot be pasted back as a sign-in link.
    return hmac.new(secret.encode(), b"sf-dev-login-cookie", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def _dev_secret(settings: Settings) -> str | None:
    if not settings.dev_autologin or settings.dev_login_secret is None:
        return None
    return settings.dev_login_secret.get_secret_value() or None


def _presents_login_secret(request: Request, secret: str) -> bool:
    return _same(request.query_params.get(DEV_LOGIN_QUERY, ""), secret)


def _presents_login_cookie(request: Request, secret: str) -> bool:
    return _same(request.cookies.get(DEV_LOGIN_COOKIE, ""), _dev_cookie_value(secret))


def dev_token(request: Request) -> str | None:
    """The dev user's token, only when DEV_AUTOLOGIN is on, the browser is this machine
    and it presents this run's sign-in secret (in the link, or the cookie it set).

    Loopback peer *and* a loopback Host header *and* the secret: a request relayed by a
    proxy, or a page of another site that rebinds its DNS name to 127.0.0.1, gets nothing.
    """
    secret = _dev_secret(get_services(request).settings)
    if secret is None or not _from_this_machine(request):
        return None
    if not (_presents_login_cookie(request, secret) or _presents_login_secret(request, secret)):
        return None
    try:
        token = DEV_TOKEN_FILE.read_text().strip()
    except OSError:
        return None
    return token or None


def _from_this_machine(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        if not ipaddress.ip_address(request.client.host).is_loopback:
            return False
    except ValueError:
        return False
    if any(name in request.headers for name in _PROXY_HEADERS):
        return False
    return urlsplit("//" + request.headers.get("host", "")).hostname in _LOOPBACK_HOSTS


def _exchange_login_secret(request: Request, path: str) -> Response | None:
    """`?login=<secret>` from this machine: set the cookie and reload without the secret."""
    if DEV_LOGIN_QUERY not in request.query_params:
        return None
    secret = _dev_secret(get_services(request).settings)
    if secret is None or not _from_this_machine(request):
        return None
    if not _presents_login_secret(request, secret):
        return None
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != DEV_LOGIN_QUERY]
    target = path + (f"?{urlencode(rest)}" if rest else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        DEV_LOGIN_COOKIE, _dev_cookie_value(secret), httponly=True, samesite="strict"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(
    request: Request, template: str, page: str, title: str, status_code: int = 200, **extra: str
) -> Response:
    if exchanged := _exchange_login_secret(request, request.url.path):
        return exchanged
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
async def home(request: Request) -> Response:
    # The dev sign-in link lands here: /?login=<secret>.
    return _exchange_login_secret(request, "/create") or RedirectResponse(
        "/create", status_code=307
    )


@router.get("/signin", response_class=HTMLResponse)
async def signin(request: Request) -> Response:
    return _page(request, "signin.html", "signin", "Sign in")


@router.get("/create", response_class=HTMLResponse)
async def create(request: Request) -> Response:
    return _page(request, "create.html", "create", "Create a track")


@router.get("/tracks", response_class=HTMLResponse)
async def library(request: Request) -> Response:
    return _page(request, "library.html", "library", "My tracks")


@router.get("/tracks/{track_id}", response_class=HTMLResponse)
async def track(request: Request, track_id: str) -> Response:
    try:
        parsed = uuid.UUID(track_id)
    except ValueError:
        return _page(request, "not_found.html", "not-found", "Not found", status_code=404)
    return _page(request, "track.html", "track", "Track", track_id=str(parsed))
