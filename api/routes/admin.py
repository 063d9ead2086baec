"""Admin-only operations: stuck jobs and bulk cancel (the CLI offers the same)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field
from temporalio.service import RPCError, RPCStatusCode

from api.deps import CurrentUser, ServicesDep
from core.admin import StuckJob, cancel_by_query, stuck_jobs
from core.contracts import JobStatus
from core.models import User


def admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin only")
    return user


router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(admin_user)])


class BulkCancel(BaseModel):
    query: str = Field(
        min_length=1,
        max_length=1000,
        description="Temporal visibility query, e.g. \"JobStatus='RENDERING' AND Provider='fal'\"",
    )


class BulkCancelled(BaseModel):
    cancelled: list[str]


@router.get("/jobs/stuck", response_model=list[StuckJob])
async def list_stuck_jobs(
    services: ServicesDep,
    minutes: Annotated[float, Query(gt=0, le=60 * 24 * 30)] = 15,
    state: JobStatus | None = None,
) -> list[StuckJob]:
    return await stuck_jobs(services.sessions, minutes, state)


@router.post("/jobs/cancel", response_model=BulkCancelled)
async def bulk_cancel(body: BulkCancel, services: ServicesDep) -> BulkCancelled:
    client = await services.temporal.client()
    try:
        cancelled = await cancel_by_query(client, body.query)
    except RPCError as exc:
        if exc.status is not RPCStatusCode.INVALID_ARGUMENT:
            raise
        # An invalid query is the caller's mistake: say what the server said.
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"query rejected: {exc.message}") from exc
    return BulkCancelled(cancelled=cancelled)
