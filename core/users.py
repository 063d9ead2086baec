"""Users and their API tokens."""

from __future__ import annotations

from sqlmodel import col, select

from core.db import SessionFactory, transaction
from core.models import ApiToken, Plan, User, utcnow
from core.settings import Settings, get_settings
from core.style import ensure_default_series, new_style_seed
from core.tokens import hash_token, new_token, record_use, usable_now


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
