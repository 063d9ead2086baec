"""Users and their API tokens."""

from __future__ import annotations

from sqlmodel import col, select

from core.db import SessionFactory, transaction
from core.models import ApiToken, Plan, User
from core.tokens import hash_token, new_token


async def create_user(
    sessions: SessionFactory,
    name: str,
    credits: int,
    plan: Plan = Plan.FREE,
    *,
    is_admin: bool = False,
) -> tuple[User, str]:
    """Create a user with one API token; the token is returned once and never stored."""
    token = new_token()
    async with transaction(sessions) as session:
        user = User(name=name, credits=credits, plan=plan, is_admin=is_admin)
        session.add(user)
        await session.flush()
        session.add(ApiToken(user_id=user.id, token_hash=hash_token(token)))
    return user, token


async def user_for_token(sessions: SessionFactory, token: str) -> User | None:
    async with sessions() as session:
        rows = await session.exec(
            select(User)
            .join(ApiToken, col(ApiToken.user_id) == col(User.id))
            .where(col(ApiToken.token_hash) == hash_token(token))
        )
        return rows.first()
