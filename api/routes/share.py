"""Sharing: the owner makes or revokes a public link; anyone with it sees a public page.

    POST   /api/tracks/{id}/share   → {slug, share_url}; the active link if there is one
    DELETE /api/tracks/{id}/share   → 204; revokes it (a new POST makes a new slug)
    GET    /share/{slug}            public HTML page with Open Graph / Twitter card tags
    GET    /share/{slug}/cover.png  the PNG cover, streamed by the API
    GET    /share/{slug}/audio      307 to a freshly signed link to the audio

Link-preview crawlers fetch og:image and og:audio later, often much later, than the page,
so those URLs must not expire: they are stable API URLs that check the slug on every
request (revoked or unknown → 404) and only then reach storage. The cover is small and
streamed, so previews never depend on the storage endpoint being reachable. The audio
can be large and players seek with Range requests, so it redirects to a signed link
(S3 and /files both serve ranges) made fresh for each request and never cached.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel

from api.deps import CurrentUser, ServicesDep, get_services
from api.web import templates
from core.logging import get_logger
from core.storage import ObjectNotFound
from domain import sharing
from domain.covers import PNG_SIZE
from domain.previews import preview_png
from domain.sharing import shared_track

log = get_logger("soundfoundry.api")

api_router = APIRouter(prefix="/api/tracks", tags=["sharing"])
public_router = APIRouter(include_in_schema=False)

# Everything the page loads is its own origin's: no script at all, our stylesheet, the
# cover and audio through the API.
SHARE_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "media-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_TITLE_CHARS = 100


class ShareOut(BaseModel):
    track_id: uuid.UUID
    slug: str
    share_url: str
    created_at: datetime


def _share_url(request: Request, slug: str) -> str:
    return f"{get_services(request).settings.public_base_url.rstrip('/')}/share/{slug}"


@api_router.post("/{track_id}/share", response_model=ShareOut)
async def share(
    track_id: uuid.UUID, request: Request, response: Response, user: CurrentUser
) -> ShareOut:
    """The track's public link: 201 when made now, 200 when it already had one."""
    link, created = await sharing.share(get_services(request), user.id, track_id)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return ShareOut(
        track_id=track_id,
        slug=link.slug,
        share_url=_share_url(request, link.slug),
        created_at=link.created_at,
    )


@api_router.delete("/{track_id}/share", status_code=status.HTTP_204_NO_CONTENT)
async def revoke(track_id: uuid.UUID, user: CurrentUser, services: ServicesDep) -> Response:
    """Revoke the track's link; its page, cover and audio answer 404 from now on."""
    await sharing.unshare(services, user.id, track_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _secure(response: Response, cache: str = "no-cache") -> Response:
    response.headers["Content-Security-Policy"] = SHARE_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    # The URL is the capability: never hand it to anyone in a Referer.
    response.headers["Referrer-Policy"] = "no-referrer"
    # Revocation must take effect at once, so caches always ask again.
    response.headers["Cache-Control"] = cache
    return response


def _gone(request: Request) -> Response:
    context = {"track": None, "version": get_services(request).settings.version}
    page = templates.TemplateResponse(request, "share.html", context, status_code=404)
    return _secure(page)


def _page_title(prompt: str) -> str:
    title = " ".join(prompt.split())
    return title if len(title) <= _TITLE_CHARS else title[: _TITLE_CHARS - 1].rstrip() + "…"


@public_router.api_route("/share/{slug}", methods=["GET", "HEAD"], response_class=HTMLResponse)
async def share_page(slug: str, request: Request) -> Response:
    services = get_services(request)
    found = await shared_track(services.sessions, slug)
    if found is None:
        return _gone(request)
    _, track = found
    base = services.settings.public_base_url.rstrip("/")
    kind = "song with vocals" if track.has_vocals else "instrumental"
    seconds = round(track.audio_duration_s or track.duration_s)
    context: dict[str, Any] = {
        "track": track,
        "version": services.settings.version,
        "title": _page_title(track.prompt),
        "description": f"A {seconds}-second {kind} made with SoundFoundry.",
        "page_url": f"{base}/share/{slug}",
        # ?v= changes with each re-roll, so previews cached by URL pick up a new cover.
        "cover_path": f"/share/{slug}/cover.png?v={track.visual_version}",
        "audio_path": f"/share/{slug}/audio",
        "base_url": base,
        "audio_type": track.audio_content_type or "audio/wav",
        "cover_size": PNG_SIZE,
        "duration_s": seconds,
    }
    return _secure(templates.TemplateResponse(request, "share.html", context))


@public_router.api_route("/share/{slug}/cover.png", methods=["GET", "HEAD"])
async def share_cover(slug: str, request: Request) -> Response:
    services = get_services(request)
    found = await shared_track(services.sessions, slug)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    try:
        # Drawn on the first request for it (the pipeline does not wait for previews), once
        # however many ask at the same time; 503 with Retry-After when too many wait.
        png_key = await preview_png(services, found[1])
        if png_key is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
        png = await services.storage.get_bytes(png_key)
    except ObjectNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found") from exc
    return _secure(Response(png, media_type="image/png"))


@public_router.api_route("/share/{slug}/audio", methods=["GET", "HEAD"])
async def share_audio(slug: str, request: Request) -> Response:
    services = get_services(request)
    found = await shared_track(services.sessions, slug)
    if found is None or not found[1].audio_key:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    # No download name: that would make it an attachment, and this link feeds a player.
    url = await services.storage.signed_url(found[1].audio_key, services.settings.signed_url_ttl_s)
    # A signed link must never outlive its signature in a cache.
    return _secure(RedirectResponse(url, status_code=307), cache="no-store")


router = APIRouter()
router.include_router(api_router)
router.include_router(public_router)
