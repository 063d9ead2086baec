"""Idempotency keys: a client's retry of a create returns the first answer, not a new job.

The key is stored with the request's hash and the response in the same transaction that
reserves the credits and writes the track (JobStore.create_track), so a track exists
exactly when its key does. Two concurrent requests with one key race on the key's
primary key: the loser's transaction rolls back (no track, no charge) and it answers
with the winner's stored response.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, delete, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db import SessionFactory, transaction
from core.models import IdempotencyKey, Job, Track, utcnow
from core.sql import dialect_insert
from domain.errors import Conflict

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Visible ASCII only: keys end up in logs and must compare byte for byte.
KEY_PATTERN = r"^[\x21-\x7e]+$"

_TABLE = cast(Table, IdempotencyKey.__table__)  # type: ignore[attr-defined]


def request_hash(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a validated body (sorted keys, no whitespace)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeyTaken(Conflict):
    """Another request with this key committed first; read its stored response."""


@dataclass(frozen=True)
class IdempotencyClaim:
    key: str
    request_hash: str
    status_code: int
    # Builds the stored response from the rows the same transaction writes.
    response: Callable[[Track, Job], dict[str, Any]]
    # Replayed instead of `status_code` once the start is known to be unconfirmed.
    unconfirmed_status_code: int | None = None

    async def store(
        self, session: AsyncSession, user_id: uuid.UUID, track: Track, job: Job
    ) -> None:
        """Insert the key inside the caller's transaction, or raise IdempotencyKeyTaken.

        ON CONFLICT DO NOTHING waits for a concurrent holder of the key to finish, so
        when no row comes back the other request has committed its track.
        """
        insert = (
            dialect_insert(session, _TABLE)
            .values(
                user_id=user_id,
                key=self.key,
                request_hash=self.request_hash,
                status_code=self.status_code,
                response=self.response(track, job),
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=[_TABLE.c.user_id, _TABLE.c.key])
            .returning(_TABLE.c.key)
        )
        if (await session.exec(insert)).first() is None:
            raise IdempotencyKeyTaken(self.key)


async def stored(sessions: SessionFactory, user_id: uuid.UUID, key: str) -> IdempotencyKey | None:
    async with sessions() as session:
        rows = await session.exec(
            select(IdempotencyKey).where(
                col(IdempotencyKey.user_id) == user_id, col(IdempotencyKey.key) == key
            )
        )
        return rows.first()


async def forget(sessions: SessionFactory, user_id: uuid.UUID, key: str) -> None:
    """Drop a key whose track never started, so the client's retry makes a new one."""
    async with transaction(sessions) as session:
        await session.exec(delete(_TABLE).where(_TABLE.c.user_id == user_id, _TABLE.c.key == key))


async def mark_unconfirmed(
    sessions: SessionFactory, user_id: uuid.UUID, claim: IdempotencyClaim
) -> None:
    """The key's track was created but its start not confirmed: replay that answer."""
    if claim.unconfirmed_status_code is None:
        return
    async with transaction(sessions) as session:
        await session.exec(
            update(_TABLE)
            .where(_TABLE.c.user_id == user_id, _TABLE.c.key == claim.key)
            .values(status_code=claim.unconfirmed_status_code)
        )
