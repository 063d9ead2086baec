"""Signed, expiring downloads for the local storage backend (S3 signs its own links).

Everything here is user content (uploaded SVG covers among it) served from the app's own
origin, so it goes out under a sandboxing CSP with nosniff: a document opened from here
runs no script and reaches nothing, whatever a sanitizer missed. SVG is an attachment
unless `inline=true`; `<img>` shows it either way (browsers ignore the disposition there).
"""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse

from api.deps import ServicesDep
from api.signed_links import USER_CONTENT_CSP, check_link_shape, refuse
from core.storage import LocalStorage, StorageError

router = APIRouter(tags=["files"])


@router.get("/files/{key:path}")
async def download(
    key: str,
    services: ServicesDep,
    expires: int = Query(),
    sig: str = Query(max_length=200),
    name: str | None = Query(default=None, max_length=200),
    inline: bool = Query(default=False, description="show an SVG in the browser (sandboxed)"),
) -> FileResponse:
    storage = services.storage
    if not isinstance(storage, LocalStorage):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    check_link_shape(expires, sig)
    # The signature covers `name` and `inline` too: neither can be added or changed.
    if not storage.verify(key, expires, sig, name, inline):
        raise refuse()
    try:
        path = storage.path_for(key)
    except StorageError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found") from exc
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    disposition = "inline"
    if media_type == "image/svg+xml" and not inline:
        disposition = "attachment"
    elif name:
        disposition = "attachment"  # a download name asks for a download
    return FileResponse(
        path,
        media_type=media_type,
        filename=name or path.name,
        content_disposition_type=disposition,
        headers={"Content-Security-Policy": USER_CONTENT_CSP, "X-Content-Type-Options": "nosniff"},
    )
