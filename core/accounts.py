"""Operator changes to a user's account: grant credits, change plan (CLI and admin API)."""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlmodel import col, select

from core.db import SessionFactory, transaction
from core.models import Plan, User


class UserNotFound(LookupError):
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


async def grant_credits(sessions: SessionFactory, user_id: uuid.UUID, credits: int) -> User:
    """Add credits in one UPDATE (safe against concurrent spending); the updated user."""
    async with transaction(sessions) as session:
        result = await session.exec(
            update(User)
            .where(col(User.id) == user_id)
            .values(credits=User.credits + credits)  # type: ignore[operator]
            .returning(col(User.id))
        )
        if result.first() is None:
            raise UserNotFound(f"no user with id {user_id}")
        user = await session.get(User, user_id, populate_existing=True)
        assert user is not None
        return user


async def set_plan(sessions: SessionFactory, user_id: uuid.UUID, plan: Plan) -> User:
    async with transaction(sessions) as session:
        user = await session.get(User, user_id, with_for_update=True)
        if user is None:
            raise UserNotFound(f"no user with id {user_id}")
        user.plan = plan
        return user
