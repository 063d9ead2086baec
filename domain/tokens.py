"""API tokens: random, shown once, stored only as a hash; named, expiring and revocable."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, select

from core.db import SessionFactory, transaction
from core.logging import get_logger
from core.models import ApiToken, User, utcnow
from domain.errors import NotFound

TOKEN_PREFIX = "sf_"
# last_used_at is this coarse, so authentication writes at most once a minute per token.
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_EXPIRY_DAYS = 3650

log = get_logger("soundfoundry.tokens")


class TokenNotFound(NotFound, LookupError):
    pass


class TooManyTokens(Exception):
    pass


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough; no salt or KDF needed.
    return hashlib.sha256(token.encode()).hexdigest()


def as_utc(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def usable_now(now: datetime) -> ColumnElement[bool]:
    """SQL condition: the token is neither revoked nor expired at `now`."""
    return and_(
        col(ApiToken.revoked_at).is_(None),
        or_(col(ApiToken.expires_at).is_(None), col(ApiToken.expires_at) > now),
    )


def is_usable(token: ApiToken, now: datetime | None = None) -> bool:
    now = now or utcnow()
    expires_at = as_utc(token.expires_at)
    return token.revoked_at is None and (expires_at is None or expires_at > now)


async def issue_token(
    sessions: SessionFactory,
    user_id: uuid.UUID,
    name: str = "default",
    expires_in_days: int | None = None,
    max_usable: int | None = None,
) -> tuple[ApiToken, str]:
    """A new token for the user: (its row, the token itself, to be shown once).

    Raises TokenNotFound for an unknown user and TooManyTokens when the user already
    holds `max_usable` usable tokens.
    """
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise ValueError(f"expiry must be 1 to {MAX_EXPIRY_DAYS} days")
    token = new_token()
    now = utcnow()
    async with transaction(sessions) as session:
        # The user's row lock makes concurrent creations count one after another.
        user = await session.get(User, user_id, with_for_update=True)
        if user is None:
            raise TokenNotFound(f"no user with id {user_id}")
        if max_usable is not None:
            held = await session.exec(
                select(func.count())
                .select_from(ApiToken)
                .where(col(ApiToken.user_id) == user_id, usable_now(now))
            )
            if held.one() >= max_usable:
                raise TooManyTokens(
                    f"at most {max_usable} active tokens per user; revoke one first"
                )
        row = ApiToken(
            user_id=user_id,
            token_hash=hash_token(token),
            label=name,
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )
        session.add(row)
    return row, token


async def list_tokens(sessions: SessionFactory, user_id: uuid.UUID) -> list[ApiToken]:
    """The user's tokens, newest first, revoked and expired ones included."""
    async with sessions() as session:
        rows = await session.exec(
            select(ApiToken)
            .where(col(ApiToken.user_id) == user_id)
            .order_by(col(ApiToken.created_at).desc())
        )
        return list(rows)


async def revoke_token(
    sessions: SessionFactory, token_id: uuid.UUID, owner_id: uuid.UUID | None = None
) -> ApiToken:
    """Revoke the token (only if it is `owner_id`'s, when given); revoking twice keeps the
    first time. Raises TokenNotFound otherwise."""
    async with transaction(sessions) as session:
        row = await session.get(ApiToken, token_id, with_for_update=True)
        if row is None or (owner_id is not None and row.user_id != owner_id):
            raise TokenNotFound(f"no token with id {token_id}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        return row


async def record_use(sessions: SessionFactory, token: ApiToken, now: datetime) -> None:
    """Move last_used_at forward if it is a minute old or more.

    Best effort: the condition in the UPDATE keeps concurrent requests to one write, and a
    failed write only costs a slightly older last_used_at, never the request.
    """
    stale = now - LAST_USED_RESOLUTION
    last_used = as_utc(token.last_used_at)
    if last_used is not None and last_used > stale:
        return
    try:
        async with transaction(sessions) as session:
            await session.exec(
                update(ApiToken)
                .where(
                    col(ApiToken.id) == token.id,
                    or_(col(ApiToken.last_used_at).is_(None), col(ApiToken.last_used_at) <= stale),
                )
                .values(last_used_at=now)
            )
    except (SQLAlchemyError, OSError) as exc:  # bookkeeping must not fail authentication
        log.warning("could not record token use", token_id=str(token.id), error=str(exc))


def describe(token: ApiToken) -> dict[str, Any]:
    """What a token's owner may see about it: never the token or its hash."""
    return {
        "id": token.id,
        "name": token.label,
        "created_at": as_utc(token.created_at),
        "last_used_at": as_utc(token.last_used_at),
        "expires_at": as_utc(token.expires_at),
        "revoked_at": as_utc(token.revoked_at),
        "active": is_usable(token),
    }
