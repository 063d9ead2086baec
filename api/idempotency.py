"""The `Idempotency-Key` header of create routes (domain/tracks/idempotency.py keeps the keys).

A route takes `key: IdempotencyKeyHeader = None`, answers `await replay(...)` when it is
not None, and otherwise passes `claim(...)` to the store so the key is written with the
rows it creates.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException, status
from fastapi.responses import JSONResponse

from core.db import SessionFactory
from core.models import Job, Track
from domain.tracks import idempotency

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=idempotency.HEADER,
        min_length=1,
        max_length=idempotency.MAX_KEY_LENGTH,
        pattern=idempotency.KEY_PATTERN,
        description="Repeat a request with the same key to get the first response again "
        "(1-255 visible ASCII characters, per user)",
    ),
]


async def replay(
    sessions: SessionFactory, user_id: uuid.UUID, key: str, body_hash: str
) -> JSONResponse | None:
    """The stored response for this key, 409 if it was used with another body, or None."""
    previous = await idempotency.stored(sessions, user_id, key)
    if previous is None:
        return None
    if previous.request_hash != body_hash:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"this {idempotency.HEADER} was already used with a different request body; "
            "use a new key for a new request",
        )
    return JSONResponse(
        previous.response,
        status_code=previous.status_code,
        headers={"Idempotent-Replayed": "true"},
    )


def claim(
    key: str | None,
    body_hash: str,
    status_code: int,
    response: Callable[[Track, Job], dict[str, Any]],
    *,
    unconfirmed_status_code: int | None = None,
) -> idempotency.IdempotencyClaim | None:
    if key is None:
        return None
    return idempotency.IdempotencyClaim(
        key, body_hash, status_code, response, unconfirmed_status_code
    )
