"""A job's live status and log as server-sent events (what the web UI's track page reads).

    GET /api/jobs/{id}/events

Authentication is the usual `Authorization: Bearer <token>` header or, because a browser's
`EventSource` cannot set headers, a `?token=<token>` query parameter. Query strings end up
in proxy and server access logs, so the token is redacted from uvicorn's access log here;
prefer the header wherever the client can set one.

The stream sends
    event: status   {status, step, progress, attempts, error_code, error_message}
                    at once, then whenever any of it changes;
    event: log      each job log entry (the JobEventOut fields), `id:` = its id, so a
                    reconnecting EventSource (Last-Event-ID) does not get it twice;
    event: done     {status} once the job is COMPLETE, FAILED or CANCELLED; then it ends;
    : heartbeat     a comment every 15 s of silence, so proxies keep the connection open.
The database is polled every half second; the stream stops when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse
from sqlmodel import col, select

from api.deps import Services, ServicesDep, authenticate
from api.routes.jobs import owned_job
from api.schemas import JobEventOut
from core.models import Job, User

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

POLL_S = 0.5
HEARTBEAT_S = 15.0
# After a terminal status, wait at most this long for the job log's closing entry (it is
# written just after the status changes) so the stream ends with the whole log.
FINAL_LOG_GRACE_S = 3.0
RETRY_MS = 2000

# Streams open right now (for tests and debugging).
open_streams: set[uuid.UUID] = set()


class _RedactTokenQuery(logging.Filter):
    """Keeps `?token=` values out of uvicorn's access log."""

    pattern = re.compile(r"([?&]token=)[^&\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.pattern.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


_access_log = logging.getLogger("uvicorn.access")
if not any(isinstance(f, _RedactTokenQuery) for f in _access_log.filters):
    _access_log.addFilter(_RedactTokenQuery())


async def stream_user(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(max_length=200)] = None,
) -> User:
    """The bearer header's user, else the `token` query parameter's (for EventSource)."""
    value = None
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            value = credentials.strip()
    return await authenticate(
        services, value or token, "missing bearer token (header, or ?token= for EventSource)"
    )


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    # json.dumps never emits a raw newline, so one data line carries the whole payload.
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


def status_payload(job: Job) -> dict[str, Any]:
    return {
        "status": job.status.value,
        "step": job.step.value,
        "progress": round(job.progress, 4),
        "attempts": job.attempts,
        "error_code": job.error_code,
        "error_message": job.error_message,
    }


async def _load_job(services: Services, job_id: uuid.UUID) -> Job | None:
    async with services.sessions() as session:
        job: Job | None = (await session.exec(select(Job).where(col(Job.id) == job_id))).first()
        return job


async def job_stream(
    services: Services, job_id: uuid.UUID, last_event_id: int | None
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    open_streams.add(job_id)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        last_write = loop.time()
        sent_status: dict[str, Any] | None = None
        sent_ids: set[int] = set()
        terminal_at: float | None = None
        while True:
            job = await _load_job(services, job_id)
            if job is None:  # deleted under us
                return
            chunks: list[str] = []
            current = status_payload(job)
            if current != sent_status:
                chunks.append(sse("status", current))
                sent_status = current
            closing_logged = False
            for entry in await services.jobs.events(job_id):
                if entry.event == job.status.value.lower():
                    closing_logged = True
                if entry.id is None or entry.id in sent_ids:
                    continue
                sent_ids.add(entry.id)
                if last_event_id is not None and entry.id <= last_event_id:
                    continue
                out = JobEventOut.model_validate(entry, from_attributes=True)
                chunks.append(sse("log", out.model_dump(mode="json"), entry.id))
            if job.status.is_terminal:
                terminal_at = terminal_at if terminal_at is not None else loop.time()
                if closing_logged or loop.time() - terminal_at >= FINAL_LOG_GRACE_S:
                    chunks.append(sse("done", {"status": job.status.value}))
                    yield "".join(chunks)
                    return
            if not chunks and loop.time() - last_write >= HEARTBEAT_S:
                chunks.append(": heartbeat\n\n")
            if chunks:
                yield "".join(chunks)
                last_write = loop.time()
            await asyncio.sleep(POLL_S)
    finally:
        open_streams.discard(job_id)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"}},
)
async def job_events(
    job_id: uuid.UUID,
    user: Annotated[User, Depends(stream_user)],
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    job = await owned_job(services, job_id, user.id)
    resume = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    return StreamingResponse(
        job_stream(services, job.id, resume),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
