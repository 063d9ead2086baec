"""Admin-only account changes: grant credits (the CLI's `users grant` does the same)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from api.deps import ServicesDep, admin_user
from domain.credits import grant_credits
from domain.users import UserNotFound

router = APIRouter(prefix="/api/admin/users", tags=["admin"], dependencies=[Depends(admin_user)])


class CreditGrant(BaseModel):
    credits: int = Field(ge=1, le=1_000_000, description="credits to add to the balance")


class AccountOut(BaseModel):
    id: uuid.UUID
    name: str
    plan: str
    credits: int


@router.post("/{user_id}/credits", response_model=AccountOut)
async def grant(user_id: uuid.UUID, body: CreditGrant, services: ServicesDep) -> AccountOut:
    try:
        user = await grant_credits(services.sessions, user_id, body.credits)
    except UserNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found") from exc
    return AccountOut(id=user.id, name=user.name, plan=user.plan.value, credits=user.credits)
