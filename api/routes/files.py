"""Signed, expiring downloads for the local storage backend (S3 signs its own links)."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse

from api.deps import ServicesDep
from core.storage import LocalStorage, StorageError

router = APIRouter(tags=["files"])


@router.get("/files/{key:path}")
async def download(
    key: str,
    services: ServicesDep,
    expires: int = Query(),
    sig: str = Query(min_length=64, max_length=64),
    name: str | None = Query(default=None, max_length=200),
) -> FileResponse:
    storage = services.storage
    if not isinstance(storage, LocalStorage):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    if not storage.verify(key, expires, sig):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "link is invalid or has expired")
    try:
        path = storage.path_for(key)
    except StorageError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found") from exc
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=name)
