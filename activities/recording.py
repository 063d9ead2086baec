"""One job_event and one JSON log line for every activity attempt.

Provider errors are turned into Temporal `ApplicationError`s here, so the retry policy in
the workflow sees a classified error type and whether another attempt can help.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.providers.base import ProviderError
from core.contracts import Step
from core.logging import get_logger
from core.metrics import count_provider_attempt
from domain.tracks.jobs import JobStore

log = get_logger("soundfoundry.activities")

# The activities whose attempts are calls on a provider (or a check of what it returned):
# provider_attempts_total counts these, not bookkeeping that merely names a provider.
PROVIDER_ACTIVITIES = frozenset({"submit_generation", "poll_generation"})


@dataclass
class Attempt:
    """What an activity learned during its attempt, written when it ends."""

    provider: str | None = None
    provider_run_id: str | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    # The step the job moves to with this attempt's success entry (same transaction).
    next_step: tuple[Step, float] | None = None


@asynccontextmanager
async def recorded_attempt(
    store: JobStore,
    *,
    track_id: uuid.UUID,
    job_id: uuid.UUID,
    event: str,
    provider: str | None = None,
    provider_run_id: str | None = None,
    record_success: bool = True,
) -> AsyncIterator[Attempt]:
    """Failures are always written; `record_success=False` keeps a routine success (a
    poll that says "still running") out of the job log."""
    info = activity.info()
    attempt = Attempt(provider=provider, provider_run_id=provider_run_id)
    context = {
        "track_id": str(track_id),
        "job_id": str(job_id),
        "workflow_id": info.workflow_id,
        "activity": info.activity_type,
        "attempt": info.attempt,
    }
    if provider:
        context["provider"] = provider
    with structlog.contextvars.bound_contextvars(**context):
        try:
            yield attempt
        except ProviderError as exc:
            if not exc.quiet:
                await _record_failure(
                    store, job_id, event, attempt, info.attempt, exc.code, exc.message
                )
            # Scrubbed and without the cause: both would be stored in the workflow history.
            raise ApplicationError(
                store.scrub(exc.message),
                type=exc.code.value,
                non_retryable=not exc.retryable,
                next_retry_delay=(
                    timedelta(seconds=exc.retry_after_s) if exc.retry_after_s else None
                ),
            ) from None
        except ApplicationError as exc:
            code = exc.type or "error"
            await _record_failure(store, job_id, event, attempt, info.attempt, code, exc.message)
            raise
        except Exception as exc:  # CancelledError is a BaseException and passes through
            await _record_failure(
                store, job_id, event, attempt, info.attempt, type(exc).__name__, str(exc)
            )
            raise
        _count_provider_attempt(attempt, None)
        if not record_success:
            return
        await store.add_event(
            job_id,
            event,
            attempt.message,
            provider=attempt.provider,
            attempt=info.attempt,
            provider_run_id=attempt.provider_run_id,
            data=attempt.data or None,
            step=attempt.next_step,
        )
        log.info(
            attempt.message or event,
            job_event=event,
            provider=attempt.provider,
            provider_run_id=attempt.provider_run_id,
            error_code=None,
        )


async def _record_failure(
    store: JobStore,
    job_id: uuid.UUID,
    event: str,
    attempt: Attempt,
    number: int,
    code: str,
    message: str,
) -> None:
    _count_provider_attempt(attempt, code)
    text = f"{event} failed: {message}"
    if attempt.provider:
        text = f"Provider {attempt.provider} failed: {message}"
    await store.add_event(
        job_id,
        f"{event}.failed",
        text,
        level="error",
        provider=attempt.provider,
        attempt=number,
        provider_run_id=attempt.provider_run_id,
        error_code=code,
    )
    log.warning(
        text,
        job_event=f"{event}.failed",
        provider=attempt.provider,
        provider_run_id=attempt.provider_run_id,
        error_code=code,
    )


def _count_provider_attempt(attempt: Attempt, error_code: str | None) -> None:
    if attempt.provider and activity.info().activity_type in PROVIDER_ACTIVITIES:
        count_provider_attempt(attempt.provider, error_code)
