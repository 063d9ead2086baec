"""Users: creating them, finding them by token, id or name, and their plan (CLI, admin API
and every authenticated request)."""

from __future__ import annotations

import uuid

from sqlmodel import col, select

from core.db import SessionFactory, transaction
from core.models import ApiToken, Plan, User, utcnow
from core.settings import Settings, get_settings
from domain.errors import NotFound
from domain.style import ensure_default_series, new_style_seed
from domain.tokens import hash_token, new_token, record_use, usable_now


async def create_user(
    sessions: SessionFactory,
    name: str,
    credits: int,
    plan: Plan = Plan.FREE,
    *,
    is_admin: bool = False,
    settings: Settings | None = None,
) -> tuple[User, str]:
    """Create a user with one API token; the token is returned once and never stored.

    With the style flags on, the user also gets a style seed and a default series.
    """
    settings = settings or get_settings()
    token = new_token()
    async with transaction(sessions) as session:
        user = User(name=name, credits=credits, plan=plan, is_admin=is_admin)
        if settings.style_seed_enabled:
            user.user_style_seed = new_style_seed()
        session.add(user)
        await session.flush()
        session.add(ApiToken(user_id=user.id, token_hash=hash_token(token)))
        if settings.style_series_enabled:
            await ensure_default_series(session, user.id)
    return user, token


async def user_for_token(sessions: SessionFactory, token: str) -> User | None:
    """The user holding this token, or None when it is unknown, revoked or expired.

    Checked on every request (and again by open event streams), so a revocation takes
    effect at once; records the token's last use at most once a minute.
    """
    now = utcnow()
    async with sessions() as session:
        rows = await session.exec(
            select(User, ApiToken)
            .join(ApiToken, col(ApiToken.user_id) == col(User.id))
            .where(col(ApiToken.token_hash) == hash_token(token), usable_now(now))
        )
        found = rows.first()
    if found is None:
        return None
    user, api_token = found
    await record_use(sessions, api_token, now)
    return user


class UserNotFound(NotFound, LookupError):
    pass


async def find_user(sessions: SessionFactory, ref: str) -> User:
    """The user whose id, or else unique name, is `ref`."""
    try:
        user_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        user_id = None
    async with sessions() as session:
        if user_id is not None:
            user = await session.get(User, user_id)
            if user is not None:
                return user
        named = list(await session.exec(select(User).where(col(User.name) == ref).limit(2)))
    if len(named) > 1:
        # Names are labels, not keys: refuse to guess.
        raise UserNotFound(f"several users are named {ref!r}; give the user's id")
    if not named:
        raise UserNotFound(f"no user with id or name {ref!r}")
    return named[0]


async def set_plan(sessions: SessionFactory, user_id: uuid.UUID, plan: Plan) -> User:
    async with transaction(sessions) as session:
        user = await session.get(User, user_id, with_for_update=True)
        if user is None:
            raise UserNotFound(f"no user with id {user_id}")
        user.plan = plan
        return user
