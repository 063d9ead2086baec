"""Who the bearer token belongs to, with the current credit balance."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser
from api.schemas import MeOut

router = APIRouter(prefix="/api/me", tags=["me"])


@router.get("", response_model=MeOut)
async def me(user: CurrentUser) -> MeOut:
    # current_user loads the row per request, so the balance is always fresh.
    return MeOut(id=user.id, name=user.name, plan=user.plan.value, credits=user.credits)
