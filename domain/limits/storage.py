"""A `limits` storage backed by the `rate_limit_counters` table.

Counters in the database are shared by every API process (uvicorn workers, replicas),
so a user gets the same limit whichever process answers. Only what the fixed-window
strategy needs is implemented: `incr`, `get` and `get_expiry` (plus the small abstract
housekeeping methods). Use it with `limits.aio.strategies.FixedWindowRateLimiter`:

    limiter = FixedWindowRateLimiter(DatabaseStorage(sessions))
    allowed = await limiter.hit(RateLimitItemPerSecond(5, 60), "create_track", user_id)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from limits.aio.storage import Storage
from sqlalchemy import Table, case, delete, select, text
from sqlalchemy.exc import SQLAlchemyError

from core.db import SessionFactory, transaction
from core.models import RateLimitCounter, utcnow
from core.sql import dialect_insert

_TABLE = cast(Table, RateLimitCounter.__table__)  # type: ignore[attr-defined]


def _aware(value: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class DatabaseStorage(Storage):
    """Fixed-window counters in SQL; one atomic upsert per hit.

    Timestamps come from the API process's clock (hosts are expected to keep NTP time):
    skew between hosts moves a window's end by that much, never the count.
    """

    def __init__(self, sessions: SessionFactory) -> None:
        super().__init__()
        self.sessions = sessions

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return SQLAlchemyError

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add `amount` to the key's window and return the new count.

        A single INSERT … ON CONFLICT DO UPDATE … RETURNING: concurrent hits from any
        number of processes serialize on the row, so none is lost or counted twice. A
        window that has ended starts again from `amount`.
        """
        now = utcnow()
        async with transaction(self.sessions) as session:
            insert = dialect_insert(session, _TABLE).values(
                key=key, count=amount, expires_at=now + timedelta(seconds=expiry)
            )
            ended = _TABLE.c.expires_at <= now
            upsert = insert.on_conflict_do_update(
                index_elements=[_TABLE.c.key],
                set_={
                    "count": case(
                        (ended, insert.excluded.count),
                        else_=_TABLE.c.count + insert.excluded.count,
                    ),
                    "expires_at": case(
                        (ended, insert.excluded.expires_at), else_=_TABLE.c.expires_at
                    ),
                },
            ).returning(_TABLE.c.count)
            count: int = (await session.exec(upsert)).scalar_one()
        return count

    async def get(self, key: str) -> int:
        async with self.sessions() as session:
            row = (
                await session.exec(  # type: ignore[call-overload]
                    select(_TABLE.c.count).where(
                        _TABLE.c.key == key, _TABLE.c.expires_at > utcnow()
                    )
                )
            ).first()
        return int(row[0]) if row else 0

    async def get_expiry(self, key: str) -> float:
        """When the key's window ends, as seconds since the epoch (now if none is open)."""
        async with self.sessions() as session:
            row = (
                await session.exec(  # type: ignore[call-overload]
                    select(_TABLE.c.expires_at).where(_TABLE.c.key == key)
                )
            ).first()
        if row is None:
            return time.time()
        return max(time.time(), _aware(row[0]).timestamp())

    async def check(self) -> bool:
        try:
            async with self.sessions() as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        except SQLAlchemyError:
            return False
        return True

    async def reset(self) -> int | None:
        async with transaction(self.sessions) as session:
            result: Any = await session.exec(delete(_TABLE))
        return int(result.rowcount)

    async def clear(self, key: str) -> None:
        async with transaction(self.sessions) as session:
            await session.exec(delete(_TABLE).where(_TABLE.c.key == key))
