"""Credits: what a track costs, and every way a balance changes.

credits = ceil(duration_s / 30 * 5), doubled when the track has vocals. So a 30 s
instrumental costs 5 (as in the runbooks), 60 s costs 10, 30 s with vocals 10.

A job's credits are reserved when it is created (`reserve`), given back at most once when
it ends without a track (`refund`), and taken again if an operator's reset revives a
refunded job (`charge_again`). Each is one conditional UPDATE inside the caller's
transaction, which also writes the job's state, so the balance and the job never
disagree. Operators add credits with `grant_credits`.
"""

from __future__ import annotations

import math
import uuid

from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db import SessionFactory, transaction
from core.models import Job, User
from domain.errors import OutOfCredits
from domain.users import UserNotFound

CREDITS_PER_30S = 5
VOCALS_MULTIPLIER = 2


class InsufficientCredits(OutOfCredits):
    def __init__(self, required: int, balance: int) -> None:
        message = f"this track needs {required} credits and the balance is {balance}"
        if balance <= 0:
            message += "; add credits to create tracks"
        super().__init__(message)
        self.required = required
        self.balance = balance


def credits_required(duration_s: int, has_vocals: bool) -> int:
    base = math.ceil(duration_s * CREDITS_PER_30S / 30)
    return base * VOCALS_MULTIPLIER if has_vocals else base


async def reserve(session: AsyncSession, user_id: uuid.UUID, cost: int) -> None:
    """Take a new job's credits, or raise InsufficientCredits and take nothing.

    One conditional UPDATE, so two concurrent requests can never both spend the same
    credits; a balance of 0 or less never creates anything, whatever the cost.
    """
    taken = await session.exec(
        update(User)
        .where(col(User.id) == user_id, col(User.credits) >= cost, col(User.credits) > 0)
        .values(credits=User.credits - cost)  # type: ignore[operator]
    )
    if taken.rowcount != 1:
        user = await session.get(User, user_id)
        raise InsufficientCredits(cost, user.credits if user else 0)


async def refund(session: AsyncSession, job: Job) -> bool:
    """Give a job's credits back, once: False when they already went back (or none were
    taken). The caller holds the job's row lock."""
    if job.credits_refunded or not job.credits_reserved:
        return False
    job.credits_refunded = True
    await session.exec(
        update(User)
        .where(col(User.id) == job.user_id)
        .values(credits=User.credits + job.credits_reserved)  # type: ignore[operator]
    )
    return True


async def charge_again(session: AsyncSession, job: Job, *, allow_negative: bool) -> None:
    """Take a refunded job's credits again (an operator's reset revived it).

    `allow_negative` when the track is already delivered: the operator chose to deliver
    it, so it is paid even from an empty balance.
    """
    condition = [col(User.id) == job.user_id]
    if not allow_negative:
        condition.append(col(User.credits) >= job.credits_reserved)
    taken = await session.exec(
        update(User).where(*condition).values(credits=User.credits - job.credits_reserved)  # type: ignore[operator]
    )
    if taken.rowcount != 1:
        user = await session.get(User, job.user_id)
        raise InsufficientCredits(job.credits_reserved, user.credits if user else 0)
    job.credits_refunded = False


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
