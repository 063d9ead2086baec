"""WAV downloads, made on request from the track's FLAC master (WAV is never stored).

The link is signed and expiring (`api.downloads.wav_link`, listed with the track's
renditions), so a browser's plain download works without an API token.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import StreamingResponse

from api.deps import ServicesDep
from api.downloads import WAV_CONTENT_TYPE, download_name, lossless_master, wav_link_valid
from api.signed_links import USER_CONTENT_CSP, check_link_shape
from core.contracts import JobStatus
from core.models import Track
from core.storage import ObjectNotFound
from domain.downloads import stream_wav

router = APIRouter(tags=["files"])


@router.get(
    "/downloads/{track_id}.wav",
    response_class=StreamingResponse,
    responses={
        status.HTTP_200_OK: {"content": {WAV_CONTENT_TYPE: {}}},
        status.HTTP_403_FORBIDDEN: {"description": "the link is invalid or has expired"},
        status.HTTP_404_NOT_FOUND: {"description": "no mastered track behind the link"},
        status.HTTP_429_TOO_MANY_REQUESTS: {
            "description": "this link or account is downloading already (Retry-After)"
        },
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "description": "the server streams its most downloads already (Retry-After)"
        },
    },
)
async def download_wav(
    track_id: uuid.UUID,
    services: ServicesDep,
    expires: int = Query(),
    sig: str = Query(max_length=200),
    name: str | None = Query(default=None, max_length=200),
) -> StreamingResponse:
    check_link_shape(expires, sig)
    if not wav_link_valid(services.settings, track_id, expires, sig):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "link is invalid or has expired")
    async with services.sessions() as session:
        track = await session.get(Track, track_id)
    master = lossless_master(track) if track and track.status == JobStatus.COMPLETE else None
    if track is None or master is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    try:
        # Decoded from the master as the client reads: no copy of it on disk, one block of
        # it in memory; a bounded number at once per link, per owner and per process.
        wav = await stream_wav(services, track.user_id, sig, master.key)
    except ObjectNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found") from exc
    # The file name comes from the track, never from the query.
    filename = download_name(track, "wav")
    return StreamingResponse(
        wav.chunks,
        media_type=WAV_CONTENT_TYPE,
        headers={
            "Content-Length": str(wav.size),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Security-Policy": USER_CONTENT_CSP,
            "X-Content-Type-Options": "nosniff",
        },
    )
