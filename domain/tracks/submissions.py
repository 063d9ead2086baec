"""The submission ledger: every request that may have started a paid provider job.

Neither fal nor Replicate takes an idempotency key, so "at most once" is ours to keep:
a row is committed (SENDING) before the request leaves, and no attempt ever sends again
for a row that is not a proven rejection. Webhooks, the provider's own listing and the
reconciler read the same rows to find and stop jobs nobody wants any more.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, update
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts import OPEN_SUBMISSION_STATES, JobStatus, SubmissionState
from core.db import SessionFactory, transaction
from core.models import Job, ProviderSubmission, Track, utcnow
from domain.tracks.jobs import ACTIVE

# Rows that stand for a job still running at the provider, once its id is known.
WITH_RUN_ID = (SubmissionState.ACCEPTED, SubmissionState.RESOLVED)
# Rows whose outcome is not known yet: the request left, no answer was recorded.
UNKNOWN = (SubmissionState.SENDING, SubmissionState.AMBIGUOUS)
# What counts against a provider's in-flight cap: jobs we know, or just sent, to be
# running. An ambiguous row may never have existed, so it does not hold capacity.
RUNNING = (SubmissionState.SENDING, SubmissionState.ACCEPTED, SubmissionState.RESOLVED)


class JobNotActive(Exception):
    """The job ended (cancelled, refunded, finished): nothing may be sent for it."""


class ProviderAtCapacity(Exception):
    def __init__(self, provider: str, in_flight: int, limit: int) -> None:
        super().__init__(f"{provider} has {in_flight} of {limit} jobs in flight")
        self.in_flight = in_flight
        self.limit = limit


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Begun:
    row: ProviderSubmission
    # True when this attempt owns a fresh row and may send; False when an earlier
    # attempt's row stands (it may have paid): resolve it, never send again.
    may_send: bool


@dataclass(frozen=True)
class Resolution:
    row: ProviderSubmission
    # A run id that had already been recorded for this row and differs from the one
    # just found: one of the two is a duplicate paid job to stop.
    duplicate_of: str | None = None


class SubmissionLedger:
    def __init__(self, sessions: SessionFactory) -> None:
        self.sessions = sessions

    async def begin(
        self,
        *,
        job_id: uuid.UUID,
        track_id: uuid.UUID,
        provider: str,
        model: str | None,
        number: int,
        workflow_run_id: str | None = None,
        max_in_flight: int = 0,
    ) -> Begun:
        """The row for this link of the chain, made (and committed) if it is new.

        A rejected row is proof that nothing was created, so it is reused with a new
        token; any other row of this run means an earlier attempt may have paid. A run
        that an operator reset finds the old run's rows: an open one is adopted (its job
        may still deliver), a closed one gets a fresh row beside it.

        A new row is only made while `provider` has fewer than `max_in_flight` running
        jobs (0: no cap); otherwise ProviderAtCapacity, and nothing is written.

        Nothing is begun for a job that is no longer QUEUED or RENDERING (JobNotActive):
        the job row is read under a share lock, so a cancel that commits first is seen
        here, and one that commits after finds this row open and stops its job.
        """
        async with transaction(self.sessions) as session:
            status = (
                await session.exec(
                    select(Job.status).where(col(Job.id) == job_id).with_for_update(read=True)
                )
            ).first()
            if status not in ACTIVE:
                raise JobNotActive(str(job_id))
            rows = list(
                await session.exec(
                    select(ProviderSubmission)
                    .where(
                        col(ProviderSubmission.job_id) == job_id,
                        col(ProviderSubmission.provider) == provider,
                        col(ProviderSubmission.number) == number,
                    )
                    .order_by(col(ProviderSubmission.created_at).desc())
                    .with_for_update()
                )
            )
            row = next((r for r in rows if r.workflow_run_id == workflow_run_id), None)
            if row is None:
                row = next((r for r in rows if r.state.open), None)
            if row is None:
                if max_in_flight:
                    await self._check_capacity(session, provider, max_in_flight)
                row = ProviderSubmission(
                    job_id=job_id,
                    track_id=track_id,
                    provider=provider,
                    model=model,
                    number=number,
                    workflow_run_id=workflow_run_id,
                    token=new_token(),
                )
                session.add(row)
                return Begun(row, may_send=True)
            if row.state is SubmissionState.REJECTED:
                row.state, row.token, row.error = SubmissionState.SENDING, new_token(), None
                row.run_id, row.urls, row.updated_at = None, None, utcnow()
                session.add(row)
                return Begun(row, may_send=True)
            return Begun(row, may_send=False)

    @staticmethod
    async def _check_capacity(session: AsyncSession, provider: str, limit: int) -> None:
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            # Serialises count-then-insert per provider across every worker; released
            # with the transaction. (SQLite allows one writer at a time anyway.)
            key = f"soundfoundry.provider.{provider}"
            await session.exec(select(func.pg_advisory_xact_lock(func.hashtext(key))))
        running = (
            await session.exec(
                select(func.count())
                .select_from(ProviderSubmission)
                .where(
                    col(ProviderSubmission.provider) == provider,
                    col(ProviderSubmission.state).in_(list(RUNNING)),
                )
            )
        ).one()
        if running >= limit:
            raise ProviderAtCapacity(provider, int(running), limit)

    async def accept(
        self, row_id: uuid.UUID, run_id: str, urls: dict[str, str], *, via: str = "answer"
    ) -> Resolution:
        """Record the run id of a submission (from its answer, a webhook or a listing)."""
        async with transaction(self.sessions) as session:
            row = await session.get(ProviderSubmission, row_id, with_for_update=True)
            assert row is not None
            if row.run_id is not None and row.run_id != run_id:
                return Resolution(row, duplicate_of=row.run_id)
            if row.run_id is None:
                row.run_id, row.urls, row.resolved_via = run_id, urls or row.urls, via
                row.error = None
            if row.state in UNKNOWN:
                was_unknown = via != "answer" or row.state is SubmissionState.AMBIGUOUS
                row.state = SubmissionState.RESOLVED if was_unknown else SubmissionState.ACCEPTED
            row.updated_at = utcnow()
            session.add(row)
            return Resolution(row)

    async def set_state(
        self,
        row_id: uuid.UUID,
        state: SubmissionState,
        error: str | None = None,
        *,
        only_from: Sequence[SubmissionState] | None = None,
    ) -> bool:
        """Move a row to `state` (optionally only from some states); False if it did not."""
        return await self._set_state(
            col(ProviderSubmission.id) == row_id, state, error, only_from=only_from
        )

    async def set_state_by_token(
        self,
        token: str,
        state: SubmissionState,
        *,
        only_from: Sequence[SubmissionState] | None = None,
    ) -> bool:
        """`set_state` for the row with this token, in one statement."""
        return await self._set_state(
            col(ProviderSubmission.token) == token, state, None, only_from=only_from
        )

    async def _set_state(
        self,
        row: ColumnElement[bool],
        state: SubmissionState,
        error: str | None,
        *,
        only_from: Sequence[SubmissionState] | None,
    ) -> bool:
        conditions = [row]
        if only_from is not None:
            conditions.append(col(ProviderSubmission.state).in_(list(only_from)))
        values: dict[str, object] = {"state": state, "updated_at": utcnow()}
        if error is not None:
            values["error"] = error[:1000]
        async with transaction(self.sessions) as session:
            result = await session.exec(
                update(ProviderSubmission).where(*conditions).values(**values)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def get(self, row_id: uuid.UUID) -> ProviderSubmission | None:
        async with self.sessions() as session:
            return await session.get(ProviderSubmission, row_id)

    async def by_token(self, token: str) -> ProviderSubmission | None:
        async with self.sessions() as session:
            return (
                await session.exec(
                    select(ProviderSubmission).where(col(ProviderSubmission.token) == token)
                )
            ).first()

    async def for_job(self, job_id: uuid.UUID) -> list[ProviderSubmission]:
        async with self.sessions() as session:
            rows = await session.exec(
                select(ProviderSubmission)
                .where(col(ProviderSubmission.job_id) == job_id)
                .order_by(col(ProviderSubmission.number), col(ProviderSubmission.created_at))
            )
            return list(rows)

    async def open_for_job(self, job_id: uuid.UUID) -> list[ProviderSubmission]:
        return [row for row in await self.for_job(job_id) if row.state.open]

    async def in_flight(self) -> dict[str, int]:
        """Jobs running at each provider now, across every worker."""
        async with self.sessions() as session:
            rows = await session.exec(
                select(ProviderSubmission.provider, func.count())
                .where(col(ProviderSubmission.state).in_(list(RUNNING)))
                .group_by(col(ProviderSubmission.provider))
            )
            return {provider: int(count) for provider, count in rows}

    async def claimed_run_ids(self, provider: str, since: datetime) -> set[str]:
        """Run ids already matched to some row, so a listing match never takes one twice."""
        async with self.sessions() as session:
            rows = await session.exec(
                select(ProviderSubmission.run_id).where(
                    col(ProviderSubmission.provider) == provider,
                    col(ProviderSubmission.run_id).is_not(None),
                    col(ProviderSubmission.created_at) >= since - timedelta(hours=1),
                )
            )
            return {run_id for run_id in rows if run_id}

    async def unwanted(self, limit: int = 100) -> list[tuple[ProviderSubmission, Track, Job]]:
        """Open rows whose job has ended, each a job nobody waits for any more, with the
        track and job they belong to; least recently looked at first."""
        async with self.sessions() as session:
            rows = await session.exec(
                select(ProviderSubmission, Track, Job)
                .join(Job, col(Job.id) == col(ProviderSubmission.job_id))
                .join(Track, col(Track.id) == col(ProviderSubmission.track_id))
                .where(
                    col(ProviderSubmission.state).in_(list(OPEN_SUBMISSION_STATES)),
                    col(Job.status).not_in([JobStatus.QUEUED, JobStatus.RENDERING]),
                )
                .order_by(col(ProviderSubmission.updated_at))
                .limit(limit)
            )
            return [(row, track, job) for row, track, job in rows]

    async def touch(self, row_id: uuid.UUID) -> None:
        async with transaction(self.sessions) as session:
            await session.exec(
                update(ProviderSubmission)
                .where(col(ProviderSubmission.id) == row_id)
                .values(updated_at=utcnow())
            )
