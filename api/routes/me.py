"""Who the bearer token belongs to: balance, plan and what the plan allows."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import CurrentUser, ServicesDep
from api.schemas import MeOut
from domain.limits.plans import RATE_LIMIT_NAMES, max_duration_s, rate_rule

router = APIRouter(prefix="/api/me", tags=["me"])


class RateLimitOut(BaseModel):
    limit: int
    window_s: int


class PlanLimitsOut(BaseModel):
    max_duration_s: int
    # create_track, cover_save, series_create: at most `limit` per `window_s` seconds.
    rate_limits: dict[str, RateLimitOut]


class MeWithLimitsOut(MeOut):
    limits: PlanLimitsOut


@router.get("", response_model=MeWithLimitsOut)
async def me(user: CurrentUser, services: ServicesDep) -> MeWithLimitsOut:
    # current_user loads the row per request, so the balance is always fresh.
    settings = services.settings
    limits = PlanLimitsOut(
        max_duration_s=max_duration_s(settings, user.plan),
        rate_limits={
            name: RateLimitOut(limit=rule.limit, window_s=rule.window_s)
            for name in RATE_LIMIT_NAMES
            for rule in [rate_rule(settings, name, user.plan)]
        },
    )
    return MeWithLimitsOut(
        id=user.id, name=user.name, plan=user.plan.value, credits=user.credits, limits=limits
    )
