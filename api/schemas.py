"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.contracts import JobStatus, RenditionsState, Step
from domain.webhooks.outgoing import check_url_shape

# Paging bounds (README, "HTTP API"). Postgres and SQLite take 64-bit LIMIT/OFFSET: an
# unbounded integer from a query string overflows in SQL, so it is refused as a 422.
MAX_PAGE_LIMIT = 100
MAX_PAGE_OFFSET = 1_000_000


def _no_control_chars(value: str | None) -> str | None:
    # NUL and other control characters break Postgres text columns and logs alike.
    if value is not None and any(ord(c) < 32 and c not in "\n\r\t" for c in value):
        raise ValueError("must not contain control characters")
    return value


class TrackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=500)
    duration_s: int = Field(ge=5, le=300, description="Length of the track in seconds")
    has_vocals: bool = False
    style_strength: float = Field(default=0.5, ge=0.0, le=1.0)
    lyrics: str | None = Field(default=None, max_length=5000)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    webhook_url: str | None = Field(
        default=None, max_length=2048, description="POSTed a signed event when the job ends"
    )
    series_id: uuid.UUID | None = Field(
        default=None,
        description="one of your series (STYLE_SERIES_ENABLED); default series if omitted",
    )

    _clean = field_validator("prompt", "lyrics", "webhook_url")(_no_control_chars)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_shape(cls, value: str | None) -> str | None:
        if value is not None:
            check_url_shape(value)  # a ValueError becomes a field-level 422
        return value

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class TrackCreated(BaseModel):
    track_id: uuid.UUID
    job_id: uuid.UUID
    credits_required: int
    status: JobStatus
    workflow_id: str


class RenditionOut(BaseModel):
    """One format a finished track can be played or downloaded in."""

    format: str = Field(description="flac (the lossless master), mp3 (the stream), wav")
    content_type: str
    bitrate_kbps: int | None = Field(default=None, description="None: lossless")
    size_bytes: int | None = Field(default=None, description="None: made on request")
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    stored: bool = Field(description="False: produced from the master when downloaded")
    url: str = Field(description="signed, expiring link (a download, with a file name)")


class TrackOut(BaseModel):
    id: uuid.UUID
    job_id: uuid.UUID | None
    status: JobStatus
    prompt: str
    duration_s: int
    has_vocals: bool
    style_strength: float
    lyrics: str | None
    seed: int
    provider: str | None
    visual_version: int
    created_at: datetime
    # The file to play: the MP3 stream once mastered, the provider's file until then.
    file_url: str | None = None
    renditions: list[RenditionOut] = Field(default_factory=list)
    renditions_state: RenditionsState | None = Field(
        default=None,
        description="pending: mastering is under way (the provider's file plays meanwhile); "
        "ready; failed: the provider's file stays; null: made before mastering existed",
    )
    cover_url: str | None = None
    audio: dict[str, Any] | None = None
    cover_source: str = "generated"  # generated | user
    series_id: uuid.UUID | None = None


class TrackPage(BaseModel):
    items: list[TrackOut]
    total: int
    limit: int
    offset: int


class JobOut(BaseModel):
    id: uuid.UUID
    track_id: uuid.UUID
    status: JobStatus
    step: Step
    progress: float
    attempts: int
    credits_reserved: int
    credits_refunded: bool
    error_code: str | None
    error_message: str | None
    workflow_id: str
    run_id: str | None
    temporal_ui_url: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class JobEventOut(BaseModel):
    ts: datetime
    level: str
    event: str
    message: str
    provider: str | None
    attempt: int | None
    provider_run_id: str | None
    error_code: str | None
    data: dict[str, Any] | None


class MeOut(BaseModel):
    id: uuid.UUID
    name: str
    plan: str
    credits: int


class WebhookSettingsOut(BaseModel):
    secret: str
    signature_header: str
    timestamp_header: str
    event_id_header: str
    scheme: str
