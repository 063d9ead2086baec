"""Admin-only operations: stuck jobs and bulk cancel (the CLI offers the same)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel
from temporalio.service import RPCError, RPCStatusCode

from api.deps import ServicesDep, admin_user
from core.contracts import JobStatus
from domain.tracks.admin import CancelFilter, StuckJob, cancel_matching, stuck_jobs

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(admin_user)])


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
async def bulk_cancel(body: CancelFilter, services: ServicesDep) -> BulkCancelled:
    """Cancel every running track workflow matching all the given criteria."""
    client = await services.temporal.client()
    try:
        cancelled = await cancel_matching(client, body)
    except RPCError as exc:
        if exc.status is not RPCStatusCode.INVALID_ARGUMENT:
            raise
        # e.g. the search attributes are not registered on this namespace.
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"filter rejected: {exc.message}") from exc
    return BulkCancelled(cancelled=cancelled)
