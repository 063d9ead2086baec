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
    event: closed   {reason, detail} when the server ends it early, then it ends:
                    reason "idle" (the job has not changed for SSE_IDLE_TIMEOUT_S) or
                    "token" (the token was revoked or expired; checked again every
                    SSE_TOKEN_RECHECK_S);
    : heartbeat     a comment every 15 s of silence, so proxies keep the connection open.
The database is polled every half second; the stream stops when the client goes away.

A user may hold SSE_MAX_STREAMS_PER_USER streams open at once; one more answers 429. The
count is kept per API process (streams are long-lived and cheap to count in memory), so
with N processes behind a balancer a user may hold up to N times that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from sqlmodel import col, select

from api.deps import Services, ServicesDep, authenticate
from api.schemas import JobEventOut
from core.models import Job, User
from domain.tracks.ownership import owned_job
from domain.users import user_for_token

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

POLL_S = 0.5
HEARTBEAT_S = 15.0
# After a terminal status, wait at most this long for the job log's closing entry (it is
# written just after the status changes) so the stream ends with the whole log.
FINAL_LOG_GRACE_S = 3.0
RETRY_MS = 2000

# Streams open right now (for tests and debugging).
open_streams: set[uuid.UUID] = set()


class StreamSlots:
    """Open streams per user in this process; a lock because tests run several apps (each
    on its own thread's loop) in one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[uuid.UUID] = Counter()

    def take(self, user_id: uuid.UUID, cap: int) -> StreamSlot | None:
        with self._lock:
            if self._open[user_id] >= cap:
                return None
            self._open[user_id] += 1
        return StreamSlot(self, user_id)

    def give_back(self, user_id: uuid.UUID) -> None:
        with self._lock:
            self._open[user_id] -= 1
            if self._open[user_id] <= 0:
                del self._open[user_id]

    def held(self, user_id: uuid.UUID) -> int:
        with self._lock:
            return self._open[user_id]


class StreamSlot:
    def __init__(self, slots: StreamSlots, user_id: uuid.UUID) -> None:
        self._slots = slots
        self._user_id = user_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.give_back(self._user_id)

    def __del__(self) -> None:
        # A response dropped before its body was ever iterated (the client left at once)
        # never runs the stream's `finally`; the slot still comes back.
        self.release()


stream_slots = StreamSlots()


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


@dataclass(frozen=True)
class StreamCaller:
    user: User
    # Kept to check again while the stream is open: a revoked token ends it.
    token: str


async def stream_caller(
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(max_length=200)] = None,
) -> StreamCaller:
    """The bearer header's user, else the `token` query parameter's (for EventSource)."""
    value = None
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            value = credentials.strip()
    chosen = value or token
    user = await authenticate(
        services, chosen, "missing bearer token (header, or ?token= for EventSource)"
    )
    assert chosen is not None  # authenticate refuses a missing token
    return StreamCaller(user, chosen)


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


async def _token_still_good(services: Services, caller: StreamCaller) -> bool:
    holder = await user_for_token(services.sessions, caller.token)
    return holder is not None and holder.id == caller.user.id


async def job_stream(
    services: Services,
    job_id: uuid.UUID,
    last_event_id: int | None,
    caller: StreamCaller,
    slot: StreamSlot,
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    settings = services.settings
    open_streams.add(job_id)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        last_write = loop.time()
        last_change = last_write
        token_checked = last_write
        sent_status: dict[str, Any] | None = None
        sent_ids: set[int] = set()
        terminal_at: float | None = None
        while True:
            if loop.time() - token_checked >= settings.sse_token_recheck_s:
                if not await _token_still_good(services, caller):
                    detail = "the token was revoked or has expired"
                    yield sse("closed", {"reason": "token", "detail": detail})
                    return
                token_checked = loop.time()
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
            if chunks:
                last_change = loop.time()
            elif loop.time() - last_change >= settings.sse_idle_timeout_s:
                # A stuck job would otherwise hold the connection (and a slot) forever.
                detail = f"the job has not changed for {settings.sse_idle_timeout_s:g} s"
                payload = {"reason": "idle", "status": job.status.value, "detail": detail}
                yield sse("closed", payload)
                return
            if not chunks and loop.time() - last_write >= HEARTBEAT_S:
                chunks.append(": heartbeat\n\n")
            if chunks:
                yield "".join(chunks)
                last_write = loop.time()
            await asyncio.sleep(POLL_S)
    finally:
        open_streams.discard(job_id)
        slot.release()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"},
        429: {"description": "the user already holds SSE_MAX_STREAMS_PER_USER open streams"},
    },
)
async def job_events(
    job_id: uuid.UUID,
    caller: Annotated[StreamCaller, Depends(stream_caller)],
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    job = await owned_job(services.sessions, job_id, caller.user.id)
    resume = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    cap = services.settings.sse_max_streams_per_user
    slot = stream_slots.take(caller.user.id, cap)
    if slot is None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"at most {cap} live job streams per user are open at once; close one first",
            headers={"Retry-After": str(RETRY_MS // 1000)},
        )
    return StreamingResponse(
        job_stream(services, job.id, resume, caller, slot),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
