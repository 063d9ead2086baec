"""Per-user rate limits as a FastAPI dependency, shared by every API process.

Add the limit to a route with `rate_limit(name)`; it authenticates the caller (the same
`current_user` the route uses, resolved once per request), counts the request in the
database (domain/limits/storage.py, fixed window) and answers 429 with `Retry-After`
when the user is over the limit:

    from api.rate_limit import rate_limit

    @router.post("/{track_id}/cover", dependencies=[rate_limit("cover_save")])
    async def save_cover(track_id: uuid.UUID, user: CurrentUser, ...) -> ...: ...

    # or take the user from it directly:
    async def create_series(user: Annotated[User, rate_limit("series_create")], ...): ...

Names and their settings (domain/limits/plans.py):

| name | limit | window |
| --- | --- | --- |
| `create_track` | RATE_LIMIT_CREATE_TRACK_FREE / _PRO by plan | RATE_LIMIT_WINDOW_S |
| `cover_save` | RATE_LIMIT_COVER_SAVE | RATE_LIMIT_WINDOW_S |
| `series_create` | RATE_LIMIT_SERIES_CREATE | RATE_LIMIT_SERIES_WINDOW_S |
| `cover_reroll` | RATE_LIMIT_COVER_REROLL | RATE_LIMIT_WINDOW_S |

Every request that reaches the route's dependencies counts, including ones later
refused (402, 403, 422): the limit is on attempts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, HTTPException, status
from limits import RateLimitItemPerSecond
from limits.aio.strategies import FixedWindowRateLimiter

from api.deps import CurrentUser, ServicesDep
from core.models import Plan, User
from core.settings import Settings
from domain.limits.plans import RATE_LIMIT_NAMES, RateLimitName, rate_rule
from domain.limits.storage import DatabaseStorage

NAMESPACE = "sf"

# Limits of this module's own, beside domain/limits/plans.py's (which GET /api/me lists).
ApiRateLimitName = Literal["cover_reroll"]
API_RATE_LIMIT_NAMES: tuple[ApiRateLimitName, ...] = ("cover_reroll",)


@dataclass(frozen=True)
class _Rule:
    limit: int
    window_s: int
    what: str


def _rule(settings: Settings, name: RateLimitName | ApiRateLimitName, plan: Plan) -> _Rule:
    if name == "cover_reroll":
        return _Rule(
            settings.rate_limit_cover_reroll, settings.rate_limit_window_s, "cover re-rolls"
        )
    rule = rate_rule(settings, name, plan)
    return _Rule(rule.limit, rule.window_s, rule.what)


def rate_limit(name: RateLimitName | ApiRateLimitName) -> Any:
    """`Depends(...)` that enforces the named per-user limit and returns the user."""
    if name not in (*RATE_LIMIT_NAMES, *API_RATE_LIMIT_NAMES):
        # Fail at import time, not on the first request.
        known = [*RATE_LIMIT_NAMES, *API_RATE_LIMIT_NAMES]
        raise ValueError(f"unknown rate limit {name!r}; known: {known}")

    async def enforce(user: CurrentUser, services: ServicesDep) -> User:
        rule = _rule(services.settings, name, user.plan)
        # Cheap to build: the storage only holds the session factory.
        limiter = FixedWindowRateLimiter(DatabaseStorage(services.sessions))
        item = RateLimitItemPerSecond(rule.limit, rule.window_s, namespace=NAMESPACE)
        if await limiter.hit(item, name, str(user.id)):
            return user
        stats = await limiter.get_window_stats(item, name, str(user.id))
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit reached: at most {rule.limit} {rule.what} per {rule.window_s} s "
            f"on the {user.plan.value} plan; try again in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    enforce.__name__ = f"rate_limit_{name}"
    return Depends(enforce)
