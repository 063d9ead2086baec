"""WAV downloads, made on request from the track's FLAC master (WAV is never stored).

The link is signed and expiring (`api.downloads.wav_link`, listed with the track's
renditions), so a browser's plain download works without an API token.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import iterate_in_threadpool

from api.deps import ServicesDep
from api.downloads import WAV_CONTENT_TYPE, download_name, lossless_master, wav_link_valid
from api.signed_links import USER_CONTENT_CSP, check_link_shape
from core.contracts import JobStatus
from core.models import Track
from core.storage import ObjectNotFound
from engines.mastering import wav_chunks, wav_size

router = APIRouter(tags=["files"])


@router.get(
    "/downloads/{track_id}.wav",
    response_class=StreamingResponse,
    responses={
        status.HTTP_200_OK: {"content": {WAV_CONTENT_TYPE: {}}},
        status.HTTP_403_FORBIDDEN: {"description": "the link is invalid or has expired"},
        status.HTTP_404_NOT_FOUND: {"description": "no mastered track behind the link"},
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
    folder = Path(tempfile.mkdtemp(prefix="sf-wav-"))
    try:
        flac = folder / "master.flac"
        await services.storage.download(master.key, flac)
        size = wav_size(flac)
    except ObjectNotFound as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found") from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # The file name comes from the track, never from the query.
    filename = download_name(track, "wav")
    return StreamingResponse(
        iterate_in_threadpool(wav_chunks(flac)),
        media_type=WAV_CONTENT_TYPE,
        headers={
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Security-Policy": USER_CONTENT_CSP,
            "X-Content-Type-Options": "nosniff",
        },
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )
