"""Every state change of a track's job, and the credits that go with it (`domain.credits`).

Each change is one transaction guarded by the current state, so a retried activity, a
replayed workflow or a reconciler racing the workflow can run it again without effect:
credits are taken once and given back at most once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Update, update
from sqlmodel import col, select

from core.contracts import (
    AudioInfo,
    GenerationRequest,
    JobStatus,
    MasteredAudio,
    RenditionsState,
    Step,
    StoredTrack,
    track_workflow_id,
)
from core.db import SessionFactory, transaction
from core.logging import SecretScrubber, get_logger
from core.metrics import observe_job_end, observe_queue_latency
from core.models import Job, JobEvent, Track, User, utcnow
from domain import credits
from domain.tracks.idempotency import IdempotencyClaim
from domain.webhooks.outgoing import new_secret as new_webhook_secret

log = get_logger("soundfoundry.jobs")

ACTIVE = (JobStatus.QUEUED, JobStatus.RENDERING)


def _owns(job: Job, run_id: str | None) -> bool:
    """May this run change the job? Yes while it is active, and also when a newer run
    than the one that finished it asks (an operator's `temporal workflow reset`).

    A job that ended before any run was recorded on it (cancelled while QUEUED) has no
    run to reset: a run that starts after that (the reconciler's restart racing the
    cancel) must not revive it, charge it again, or pay a provider for it.
    """
    if job.status in ACTIVE:
        return True
    return run_id is not None and job.run_id is not None and job.run_id != run_id


class JobStore:
    def __init__(self, sessions: SessionFactory, secrets: Iterable[str] = ()) -> None:
        self.sessions = sessions
        # Job events and error messages are shown to users: scrub every configured secret
        # (a provider's error may quote another provider's key), not just log lines.
        self.scrub = SecretScrubber(secrets).scrub

    async def create_track(
        self,
        user_id: uuid.UUID,
        request: GenerationRequest,
        cost: int,
        *,
        webhook_url: str | None = None,
        idempotency: IdempotencyClaim | None = None,
        series_id: uuid.UUID | None = None,
    ) -> tuple[Track, Job]:
        """Reserve the credits and write the track and its job, all or nothing.

        With `idempotency`, the key and its response are written in the same transaction;
        IdempotencyKeyTaken means a concurrent request with that key won, and nothing of
        this one is kept.
        """
        async with transaction(self.sessions) as session:
            await credits.reserve(session, user_id, cost)
            track = Track(
                user_id=user_id,
                prompt=request.prompt,
                duration_s=request.duration_s,
                has_vocals=request.has_vocals,
                style_strength=request.style_strength,
                lyrics=request.lyrics,
                seed=request.seed,
                webhook_url=webhook_url,
                series_id=series_id,
            )
            job = Job(
                track_id=track.id,
                user_id=user_id,
                workflow_id=track_workflow_id(track.id),
                credits_reserved=cost,
            )
            session.add(track)
            await session.flush()
            session.add(job)
            if idempotency is not None:
                await idempotency.store(session, user_id, track, job)
        return track, job

    async def set_run_id(self, job_id: uuid.UUID, run_id: str) -> bool:
        """Record the run that renders the job; False (nothing written) once the job has
        ended, so a run started after a cancel never becomes its owner."""
        async with transaction(self.sessions) as session:
            result = await session.exec(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.status).in_(ACTIVE))
                .values(run_id=run_id)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def is_active(self, job_id: uuid.UUID) -> bool:
        async with self.sessions() as session:
            status = (await session.exec(select(Job.status).where(col(Job.id) == job_id))).first()
        return status in ACTIVE

    async def mark_rendering(self, job_id: uuid.UUID, run_id: str | None = None) -> bool:
        """Start (or, after `temporal workflow reset`, restart) rendering for a run."""
        async with transaction(self.sessions) as session:
            job = await session.get(Job, job_id, with_for_update=True)
            if job is None or not _owns(job, run_id):
                return False
            if job.credits_refunded:
                # A reset revived a job whose credits went back: take them again.
                await credits.charge_again(session, job, allow_negative=False)
            # Only the first start ends the wait in the queue; retries and resets do not.
            queued_since = job.created_at if job.status == JobStatus.QUEUED else None
            now = utcnow()
            job.status, job.step, job.updated_at = JobStatus.RENDERING, Step.PREPARING, now
            job.finished_at = job.error_code = job.error_message = None
            job.run_id = run_id or job.run_id
            await session.exec(
                update(Track)
                .where(col(Track.id) == job.track_id)
                .values(status=JobStatus.RENDERING, updated_at=now)
            )
        if queued_since is not None:
            observe_queue_latency(queued_since)
        return True

    async def set_step(
        self, job_id: uuid.UUID, step: Step, progress: float, attempts: int | None = None
    ) -> None:
        async with transaction(self.sessions) as session:
            await session.exec(_step_update(job_id, step, progress, attempts))

    async def mark_complete(
        self,
        job_id: uuid.UUID,
        stored: StoredTrack,
        info: AudioInfo,
        content_type: str,
        run_id: str | None = None,
        renditions_pending: bool = False,
    ) -> bool:
        """COMPLETE, once; True also when this run already made it so (a retried
        activity), False when the job moved away from this run (cancelled, refunded,
        finished by another run): the caller must not announce or deliver it."""
        async with transaction(self.sessions) as session:
            job = await session.get(Job, job_id, with_for_update=True)
            if job is None:
                return False
            if job.status == JobStatus.COMPLETE and run_id is not None and job.run_id == run_id:
                return True
            if not _owns(job, run_id):
                return False
            if job.credits_refunded:
                # A reset past the start finished a job that had been refunded; the
                # operator chose to deliver it, so it is charged again.
                await credits.charge_again(session, job, allow_negative=True)
            job.run_id = run_id or job.run_id
            now = utcnow()
            job.status, job.step, job.progress = JobStatus.COMPLETE, Step.DONE, 1.0
            job.updated_at = job.finished_at = now
            job.error_code = job.error_message = None
            track = await session.get(Track, job.track_id)
            assert track is not None
            track.status = JobStatus.COMPLETE
            track.provider = stored.provider
            track.cover_key = stored.cover_key
            track.peaks = info.peaks or None
            track.updated_at = now
            if track.renditions_state is not RenditionsState.READY:
                # (A reset run finishing a mastered track again keeps its mastered files.)
                track.audio_key = stored.audio_key
                track.audio_content_type = content_type
                track.audio_duration_s = info.duration_s
                track.sample_rate = info.sample_rate
                track.channels = info.channels
                track.peak_dbfs = info.peak_dbfs
                track.rms_dbfs = info.rms_dbfs
                track.loudness_lufs = info.loudness_lufs
                track.bpm = info.bpm
                if renditions_pending:
                    track.renditions_state = RenditionsState.PENDING
            created_at, duration_s = job.created_at, track.duration_s
        # Observed once committed, and only on a change, so a retried activity adds nothing.
        observe_job_end("complete", created_at, duration_s)
        return True

    async def record_renditions(
        self, job_id: uuid.UUID, mastered: MasteredAudio, run_id: str | None = None
    ) -> bool:
        """Point the finished track at its mastered files: the stream plays, the master
        downloads. False (nothing changed) unless the job is COMPLETE by this run."""
        stream = mastered.renditions[-1]
        async with transaction(self.sessions) as session:
            job = await session.get(Job, job_id, with_for_update=True)
            if job is None or job.status != JobStatus.COMPLETE:
                return False
            if run_id is not None and job.run_id not in (None, run_id):
                return False
            track = await session.get(Track, job.track_id)
            assert track is not None
            track.renditions = [r.model_dump(mode="json") for r in mastered.renditions]
            track.renditions_state = RenditionsState.READY
            track.audio_key = stream.key
            track.audio_content_type = stream.content_type
            track.audio_duration_s = stream.duration_s
            track.sample_rate = stream.sample_rate
            track.channels = stream.channels
            track.loudness_lufs = mastered.loudness_after_lufs
            track.true_peak_dbtp = mastered.true_peak_after_dbtp
            track.bpm = mastered.bpm
            track.updated_at = utcnow()
        return True

    async def renditions_failed(self, job_id: uuid.UUID) -> bool:
        """Mastering gave up: the provider's file stays the track's only file."""
        async with transaction(self.sessions) as session:
            job = await session.get(Job, job_id)
            if job is None:
                return False
            result = await session.exec(
                update(Track)
                .where(
                    col(Track.id) == job.track_id,
                    col(Track.renditions_state) == RenditionsState.PENDING,
                )
                .values(renditions_state=RenditionsState.FAILED, updated_at=utcnow())
            )
        return bool(result.rowcount)

    async def finish_unsuccessfully(
        self,
        job_id: uuid.UUID,
        status: JobStatus,
        error_code: str | None,
        message: str | None,
        run_id: str | None = None,
    ) -> bool:
        """FAILED, CANCELLED or TERMINATED: record it and refund, exactly once."""
        assert status in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TERMINATED)
        async with transaction(self.sessions) as session:
            job = await session.get(Job, job_id, with_for_update=True)
            if job is None or not _owns(job, run_id):
                return False
            job.run_id = run_id or job.run_id
            now = utcnow()
            job.status = status
            job.error_code = error_code
            job.error_message = self.scrub(message or "")[:1000] or None
            job.updated_at = job.finished_at = now
            refunded = await credits.refund(session, job)
            await session.exec(
                update(Track)
                .where(col(Track.id) == job.track_id)
                .values(status=status, updated_at=now)
            )
            created_at = job.created_at
            duration_s = (
                await session.exec(select(Track.duration_s).where(col(Track.id) == job.track_id))
            ).one()
        observe_job_end(status.value.lower(), created_at, duration_s)
        log.info(
            "job finished",
            job_id=str(job_id),
            status=status.value,
            error_code=error_code,
            refunded=job.credits_reserved if refunded else 0,
        )
        return True

    async def add_event(
        self,
        job_id: uuid.UUID,
        event: str,
        message: str = "",
        *,
        level: str = "info",
        provider: str | None = None,
        attempt: int | None = None,
        provider_run_id: str | None = None,
        error_code: str | None = None,
        data: dict[str, Any] | None = None,
        step: tuple[Step, float] | None = None,
    ) -> None:
        """Log an event; with `step`, the job moves to that step in the same transaction
        (an event and the step it leads to never cost two)."""
        async with transaction(self.sessions) as session:
            if step is not None:
                await session.exec(_step_update(job_id, *step))
            session.add(
                JobEvent(
                    job_id=job_id,
                    event=event,
                    message=self.scrub(message)[:2000],
                    level=level,
                    provider=provider,
                    attempt=attempt,
                    provider_run_id=provider_run_id,
                    error_code=error_code,
                    data=data,
                )
            )

    async def webhook_secret(self, user_id: uuid.UUID, *, rotate: bool = False) -> str:
        """The user's signing secret, made on first use."""
        async with transaction(self.sessions) as session:
            user = await session.get(User, user_id, with_for_update=True)
            assert user is not None
            if rotate or not user.webhook_secret:
                user.webhook_secret = new_webhook_secret()
            return user.webhook_secret

    async def events(self, job_id: uuid.UUID) -> list[JobEvent]:
        async with self.sessions() as session:
            rows = await session.exec(
                select(JobEvent)
                .where(col(JobEvent.job_id) == job_id)
                .order_by(col(JobEvent.ts), col(JobEvent.id))
            )
            return list(rows)

    async def mastering_jobs(self, limit: int = 500) -> list[Job]:
        """COMPLETE jobs whose tracks are still being mastered, oldest first."""
        async with self.sessions() as session:
            rows = await session.exec(
                select(Job)
                .join(Track, col(Track.id) == col(Job.track_id))
                .where(
                    col(Job.status) == JobStatus.COMPLETE,
                    col(Track.renditions_state) == RenditionsState.PENDING,
                )
                .order_by(col(Job.created_at))
                .limit(limit)
            )
            return list(rows)

    async def active_jobs(self, limit: int = 500) -> list[tuple[Job, Track]]:
        """Jobs not yet finished, oldest first (the reconciler's work list)."""
        async with self.sessions() as session:
            rows = await session.exec(
                select(Job, Track)
                .join(Track, col(Track.id) == col(Job.track_id))
                .where(col(Job.status).in_(ACTIVE))
                .order_by(col(Job.created_at))
                .limit(limit)
            )
            return [(job, track) for job, track in rows]


def _step_update(
    job_id: uuid.UUID, step: Step, progress: float, attempts: int | None = None
) -> Update:
    """Move an active job to `step`; an ended job keeps the step it ended in."""
    values: dict[str, Any] = {"step": step, "progress": progress, "updated_at": utcnow()}
    if attempts is not None:
        values["attempts"] = attempts
    return update(Job).where(col(Job.id) == job_id, col(Job.status).in_(ACTIVE)).values(**values)
