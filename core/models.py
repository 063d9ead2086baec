"""Database tables (SQLModel). Alembic migrations must produce exactly these."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from core.contracts import JobStatus, RenditionsState, Step, SubmissionState


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), **kwargs)  # type: ignore[call-overload]


def _enum(enum: type[StrEnum], **kwargs: Any) -> Any:
    """A StrEnum stored as its value in a VARCHAR: no database enum type to migrate."""
    column_type = SAEnum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )
    return Field(sa_type=column_type, **kwargs)  # type: ignore[call-overload]


class Plan(StrEnum):
    FREE = "free"
    PRO = "pro"


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=100)
    plan: Plan = _enum(Plan, default=Plan.FREE)
    credits: int = Field(default=0)
    # Admins may list stuck jobs and cancel jobs in bulk through /api/admin.
    is_admin: bool = Field(default=False)
    # Drives the look of every cover this user gets (STYLE_SEED_ENABLED).
    user_style_seed: int | None = None
    # Signs this user's webhook events (HMAC-SHA256); shown only to the user.
    webhook_secret: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts()


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True)
    # sha256 of the token; the token itself is shown once and never stored.
    token_hash: str = Field(max_length=64, unique=True)
    label: str = Field(default="default", max_length=100)
    created_at: datetime = _ts()
    # Written at most once a minute per token, so authentication is not a write per request.
    last_used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    # Kept, not deleted, so the owner still sees when and which token was revoked.
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Track(SQLModel, table=True):
    __tablename__ = "tracks"
    __table_args__ = (Index("ix_tracks_user_created", "user_id", "created_at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id")
    prompt: str = Field(max_length=500)
    duration_s: int
    has_vocals: bool = False
    style_strength: float = 0.5
    lyrics: str | None = Field(default=None, max_length=5000)
    seed: int = 0
    status: JobStatus = _enum(JobStatus, default=JobStatus.QUEUED)
    provider: str | None = Field(default=None, max_length=32)
    audio_key: str | None = Field(default=None, max_length=512)
    audio_content_type: str | None = Field(default=None, max_length=64)
    cover_key: str | None = Field(default=None, max_length=512)
    # PNG rendering of the cover, for link previews (og:image).
    cover_png_key: str | None = Field(default=None, max_length=512)
    cover_source: str = Field(default="generated", max_length=16)  # generated | user
    cover_dark: bool | None = None
    visual_version: int = 1
    series_id: uuid.UUID | None = Field(default=None, foreign_key="series.id", index=True)
    webhook_url: str | None = Field(default=None, max_length=2048)
    # Audio metadata measured by the audio check.
    audio_duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    peak_dbfs: float | None = None
    rms_dbfs: float | None = None
    loudness_lufs: float | None = None
    bpm: float | None = None
    peaks: list[float] | None = Field(default=None, sa_column=Column(JSON))
    # Mastering: the true peak after it, and the stored files (`Rendition`s, lossless
    # master first). Tracks finished before mastering existed have neither.
    true_peak_dbtp: float | None = None
    renditions: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    renditions_state: RenditionsState | None = _enum(RenditionsState, default=None, nullable=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    track_id: uuid.UUID = Field(foreign_key="tracks.id", index=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True)
    workflow_id: str = Field(max_length=128, unique=True)
    run_id: str | None = Field(default=None, max_length=64)
    status: JobStatus = _enum(JobStatus, default=JobStatus.QUEUED, index=True)
    step: Step = _enum(Step, default=Step.QUEUED)
    progress: float = 0.0
    attempts: int = 0
    credits_reserved: int = 0
    # Set once, in the same transaction that gives the credits back.
    credits_refunded: bool = False
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = Field(default=None, max_length=1000)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: uuid.UUID = Field(foreign_key="jobs.id", index=True)
    ts: datetime = _ts()
    level: str = Field(default="info", max_length=16)
    event: str = Field(max_length=64)
    provider: str | None = Field(default=None, max_length=32)
    attempt: int | None = None
    provider_run_id: str | None = Field(default=None, max_length=128)
    error_code: str | None = Field(default=None, max_length=64)
    message: str = Field(default="", max_length=2000)
    data: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class Series(SQLModel, table=True):
    __tablename__ = "series"
    __table_args__ = (UniqueConstraint("user_id", "slug"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True)
    slug: str = Field(max_length=100)
    title: str = Field(max_length=200)
    created_at: datetime = _ts()


class StyleUnlock(SQLModel, table=True):
    __tablename__ = "style_unlocks"
    __table_args__ = (UniqueConstraint("user_id", "kind", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", index=True)
    kind: str = Field(max_length=32)  # e.g. "palette"
    name: str = Field(max_length=64)
    unlocked_at: datetime = _ts()


class ShareLink(SQLModel, table=True):
    __tablename__ = "share_links"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    track_id: uuid.UUID = Field(foreign_key="tracks.id", index=True)
    user_id: uuid.UUID = Field(foreign_key="users.id")
    # Unguessable: the slug alone grants access to the public page.
    slug: str = Field(max_length=64, unique=True)
    created_at: datetime = _ts()
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"

    user_id: uuid.UUID = Field(foreign_key="users.id", primary_key=True)
    key: str = Field(max_length=255, primary_key=True)
    request_hash: str = Field(max_length=64)
    status_code: int
    response: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()


class RateLimitCounter(SQLModel, table=True):
    """Fixed-window counters shared by every API process."""

    __tablename__ = "rate_limit_counters"

    key: str = Field(max_length=255, primary_key=True)
    count: int = 0
    expires_at: datetime = Field(sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class ProviderSubmission(SQLModel, table=True):
    """One request that may have started a paid job at a provider: the submission ledger.

    The row is committed in state SENDING before a byte goes out, so an attempt that dies
    mid-request leaves a trace that stops any later attempt from paying again.
    """

    __tablename__ = "provider_submissions"
    # One row per link per workflow run: an operator's reset may pay again, nothing else.
    __table_args__ = (UniqueConstraint("job_id", "provider", "number", "workflow_run_id"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    job_id: uuid.UUID = Field(foreign_key="jobs.id", index=True)
    track_id: uuid.UUID = Field(foreign_key="tracks.id")
    provider: str = Field(max_length=32)
    model: str | None = Field(default=None, max_length=128)
    # The link of the provider chain this submission serves (1, 2, ...).
    number: int
    workflow_run_id: str | None = Field(default=None, max_length=64)
    # Random, ours: carried by the provider's webhook so a lost answer can be matched.
    token: str = Field(max_length=64, unique=True)
    state: SubmissionState = _enum(SubmissionState, default=SubmissionState.SENDING, index=True)
    run_id: str | None = Field(default=None, max_length=128, index=True)
    urls: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))
    # How the run id became known: "answer", "webhook" or "listing".
    resolved_via: str | None = Field(default=None, max_length=16)
    error: str | None = Field(default=None, max_length=1000)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class ProviderWebhookDelivery(SQLModel, table=True):
    """A provider webhook delivery already taken, by the digest of what its signature
    covers: the same signed delivery is accepted once, even inside the timestamp
    tolerance (its token, which the provider does not sign, cannot redirect it to another
    submission). Rows older than the tolerance prove nothing and are purged."""

    __tablename__ = "provider_webhook_deliveries"

    digest: str = Field(max_length=64, primary_key=True)
    provider: str = Field(max_length=32)
    received_at: datetime = _ts(index=True)
