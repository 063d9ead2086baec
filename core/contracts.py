"""The workflow contract: every type and name that crosses the Temporal boundary.

Workflow and query/signal names, ids, search-attribute keys, error codes, the workflow's
input and output and every activity's payload. They live at the bottom layer so the API
starts workflows by name without importing workflow, activity or provider code. All are
pydantic models carried by `temporalio.contrib.pydantic.pydantic_data_converter`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field
from temporalio.common import SearchAttributeKey

TRACK_WORKFLOW = "TrackWorkflow"
PROVIDER_HEALTH_WORKFLOW = "ProviderHealthWorkflow"
RECONCILE_WORKFLOW = "ReconcileWorkflow"
PROGRESS_QUERY = "progress"
# A verified provider webhook, delivered by the API to the track's workflow.
PROVIDER_EVENT_SIGNAL = "provider_event"


# Keyword search attributes on every track workflow, so operators find a job by them in
# the Web UI and `temporal workflow list --query`. The API sets the first three at start;
# the workflow keeps JobStatus and Provider current. Registered on the namespace by every
# worker at start-up (`core.temporal.ensure_search_attributes`).
TRACK_ID_ATTRIBUTE = SearchAttributeKey.for_keyword("TrackId")
USER_ID_ATTRIBUTE = SearchAttributeKey.for_keyword("UserId")
PROVIDER_ATTRIBUTE = SearchAttributeKey.for_keyword("Provider")
JOB_STATUS_ATTRIBUTE = SearchAttributeKey.for_keyword("JobStatus")
SEARCH_ATTRIBUTES = (
    TRACK_ID_ATTRIBUTE,
    USER_ID_ATTRIBUTE,
    PROVIDER_ATTRIBUTE,
    JOB_STATUS_ATTRIBUTE,
)


def track_workflow_id(track_id: uuid.UUID | str) -> str:
    return f"track-{track_id}"


def reconcile_schedule_id(task_queue: str) -> str:
    return f"reconcile-{task_queue}"


def provider_health_workflow_id(task_queue: str) -> str:
    # Per task queue, so deployments sharing a namespace check their own workers.
    return f"provider-health-{task_queue}"


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RENDERING = "RENDERING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TERMINATED = "TERMINATED"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RENDERING)


class Step(StrEnum):
    QUEUED = "queued"
    PREPARING = "preparing"
    # Held until the provider has room (its in-flight cap, across all workers).
    PROVIDER_QUEUE = "provider_queue"
    GENERATING = "generating"
    CHECKING = "checking"
    STORING = "storing"
    COVER = "cover"
    FINISHING = "finishing"
    DONE = "done"


class SubmissionState(StrEnum):
    """Where one paid submission stands (the provider_submissions ledger)."""

    SENDING = "sending"  # committed before the request left; outcome not yet known
    ACCEPTED = "accepted"  # the provider answered with its run id
    REJECTED = "rejected"  # provably nothing was created (refused before or on arrival)
    AMBIGUOUS = "ambiguous"  # the request left and no answer or trace of it was found
    RESOLVED = "resolved"  # was sending/ambiguous; its run id was found later
    CANCELLED = "cancelled"  # we asked the provider to stop it
    FINISHED = "finished"  # its result was collected (or it ended at the provider)

    @property
    def open(self) -> bool:
        """May still be running (and costing) at the provider."""
        return self in OPEN_SUBMISSION_STATES

    @property
    def paid(self) -> bool:
        """May have cost money: everything but a proven rejection."""
        return self is not SubmissionState.REJECTED


OPEN_SUBMISSION_STATES = frozenset(
    {
        SubmissionState.SENDING,
        SubmissionState.ACCEPTED,
        SubmissionState.AMBIGUOUS,
        SubmissionState.RESOLVED,
    }
)


class GenerationRequest(BaseModel):
    """What a provider is asked to make."""

    prompt: str
    duration_s: int
    has_vocals: bool = False
    style_strength: float = 0.5
    lyrics: str | None = None
    seed: int = 0


class TrackInput(BaseModel):
    track_id: uuid.UUID
    job_id: uuid.UUID
    user_id: uuid.UUID
    request: GenerationRequest
    # Told when the job ends (COMPLETE, FAILED or CANCELLED); None for most tracks.
    webhook_url: str | None = None


class RetryBounds(BaseModel):
    max_attempts: int
    initial_interval_s: float
    max_interval_s: float


class ProviderPlan(BaseModel):
    """One link of the chain as the worker saw it when the track started."""

    name: str
    model: str | None = None
    skip_reason: str | None = None
    # False for the local synth: nothing to poll, the render happens on fetch.
    remote: bool = True


class GenerationPlan(BaseModel):
    """Everything the workflow needs from worker settings, recorded once in history."""

    providers: list[ProviderPlan]
    max_submissions: int
    submit_retry: RetryBounds
    poll_retry: RetryBounds
    generation_timeout_s: float
    heartbeat_timeout_s: float
    # Waiting on a provider: polls every poll_interval_s, or only every
    # webhook_poll_interval_s (the safety net) while a submission's webhook is expected.
    poll_interval_s: float
    webhook_poll_interval_s: float
    request_timeout_s: float
    # How long a submit whose answer was lost is looked for at the provider.
    resolve_window_s: float
    ambiguous_fallback: bool = True
    # Whether TrackId/UserId/Provider/JobStatus are registered on the namespace.
    search_attributes: bool = False
    # Where mastering runs (None: the track's own task queue).
    mastering_task_queue: str | None = None


class Submission(BaseModel):
    """A paid job at a provider. Its id is in history before anything waits on it."""

    track_id: uuid.UUID
    job_id: uuid.UUID
    provider: str
    model: str | None = None
    run_id: str
    request: GenerationRequest
    # Provider-specific URLs handed back at submit (fal's status/response/cancel URLs).
    urls: dict[str, str] = Field(default_factory=dict)
    # The ledger row's token: every track's submission has one (a provider called
    # directly, as in its own tests, leaves it None).
    token: str | None = None
    # The provider had finished it when the submit looked at it (remote providers,
    # unless a webhook is expected).
    done: bool = False
    # It was submitted with a webhook URL: the provider will tell us when it ends.
    webhook: bool = False


class ProviderEvent(BaseModel):
    """What a verified provider webhook said about one of our submissions."""

    token: str
    provider: str
    run_id: str
    # "succeeded" | "failed" | "cancelled"
    state: str
    error: str | None = None


class PollStatus(BaseModel):
    """One look at a provider's job: still going (with progress), or done."""

    done: bool
    progress: float | None = None
    # Where a finished job's audio is, when the look that saw it finish already said: the
    # download then goes straight there instead of asking the provider again.
    audio_url: str | None = None


class StoredAudio(BaseModel):
    """Audio a provider produced, checked and stored at the track's audio key."""

    provider: str
    run_id: str
    key: str
    extension: str
    content_type: str
    size_bytes: int


class AudioInfo(BaseModel):
    duration_s: float
    sample_rate: int
    channels: int
    peak_dbfs: float
    rms_dbfs: float
    loudness_lufs: float | None = None
    bpm: float | None = None
    peaks: list[float] = Field(default_factory=list)


class CheckedAudio(BaseModel):
    """What collecting a finished job gave: the stored audio and what its check measured."""

    audio: StoredAudio
    info: AudioInfo


class RenditionsState(StrEnum):
    """Where a finished track's mastered files stand; the track plays meanwhile."""

    PENDING = "pending"  # the provider's file plays; master and stream are being made
    READY = "ready"
    FAILED = "failed"  # the provider's file stays the only one


class Rendition(BaseModel):
    """One stored file of a finished track."""

    format: str  # "flac" | "mp3" | the provider's extension before mastering
    key: str
    content_type: str
    bitrate_kbps: int | None = None  # None: lossless
    size_bytes: int
    sample_rate: int
    channels: int
    duration_s: float


class MasteredAudio(BaseModel):
    """What mastering made of a track's audio, and what it measured on the way."""

    source_key: str
    renditions: list[Rendition]  # lossless master first, then the stream
    loudness_before_lufs: float | None
    true_peak_before_dbtp: float | None
    loudness_after_lufs: float | None
    true_peak_after_dbtp: float | None
    gain_db: float
    bpm: float | None = None


class StoredTrack(BaseModel):
    audio_key: str
    cover_key: str
    provider: str


class TrackResult(BaseModel):
    track_id: uuid.UUID
    status: JobStatus
    provider: str | None = None
    audio_key: str | None = None
    cover_key: str | None = None
    error_code: str | None = None


class Progress(BaseModel):
    step: Step
    progress: float
    provider: str | None = None
    attempt: int = 0


class ProviderHealth(BaseModel):
    status: str  # "ok" | "fail" | "unconfigured"
    error: str | None = None


class ProviderHealthReport(BaseModel):
    """Checked on a worker, where the provider keys live."""

    providers: dict[str, ProviderHealth]

    def as_flat_dict(self) -> dict[str, str | None]:
        """The runbooks' shape: {"fal": "ok", "fal_error": null, ...}."""
        flat: dict[str, str | None] = {}
        for name, health in self.providers.items():
            flat[name] = health.status
            flat[f"{name}_error"] = health.error
        return flat


class ReconcileReport(BaseModel):
    checked: int = 0
    # job id -> the status the database was brought to
    fixed: dict[str, JobStatus] = Field(default_factory=dict)
    restarted: list[str] = Field(default_factory=list)
    provider_jobs_cancelled: int = 0


class WebhookInput(BaseModel):
    track: TrackInput
    status: JobStatus
    error_code: str | None = None


class ErrorCode(StrEnum):
    UNAUTHORIZED = "http_401"
    FORBIDDEN = "http_403"
    INVALID = "http_422"
    RATE_LIMITED = "http_429"
    SERVER = "http_5xx"
    TIMEOUT = "timeout"
    # The submit left and its outcome could not be found: it may have paid.
    AMBIGUOUS = "ambiguous_submit"
    SUBMISSION_CAP = "submission_cap"
    # The provider's in-flight cap is reached: the workflow waits and asks again.
    PROVIDER_BUSY = "provider_busy"
    JOB_FAILED = "job_failed"
    JOB_CANCELLED = "job_cancelled"
    BAD_AUDIO = "bad_audio"
    UNCONFIGURED = "unconfigured"
    UNSUPPORTED = "unsupported"
    OTHER = "provider_error"
    # Not the provider's: how a job ends when our own bookkeeping ends it.
    INSUFFICIENT_CREDITS = "insufficient_credits"
    # The job row moved away from this run (cancelled, refunded, finished by another):
    # whatever the run was about to pay for or announce must not happen.
    JOB_MOVED = "job_moved"
    WORKFLOW_TERMINATED = "terminated"
    WORKFLOW_TIMED_OUT = "timed_out"
    WORKFLOW_FAILED = "workflow_failed"
    WEBHOOK_TARGET_REJECTED = "webhook_target_rejected"
    WEBHOOK_UNREACHABLE = "webhook_unreachable"


# Errors that another attempt at the same provider cannot fix.
NON_RETRYABLE = frozenset(
    {
        ErrorCode.UNAUTHORIZED,
        ErrorCode.FORBIDDEN,
        ErrorCode.INVALID,
        ErrorCode.JOB_FAILED,
        ErrorCode.JOB_CANCELLED,
        ErrorCode.BAD_AUDIO,
        ErrorCode.UNCONFIGURED,
        ErrorCode.UNSUPPORTED,
        ErrorCode.AMBIGUOUS,
        ErrorCode.SUBMISSION_CAP,
        ErrorCode.PROVIDER_BUSY,
        ErrorCode.JOB_MOVED,
    }
)


# Activity payloads: what the workflow hands each activity.


class SubmitInput(BaseModel):
    track: TrackInput
    provider: str
    submission_number: int
    # The provider that failed before this one, so the job log shows the fallback.
    falling_back_from: str | None = None
    # Paid submissions (ledger rows) a track may make, and how long a lost answer is
    # looked for.
    max_paid: int
    resolve_window_s: float
    # When this track first found the provider at its in-flight cap (for the metric).
    waiting_since: datetime | None = None


class CancelInput(BaseModel):
    track: TrackInput
    reason: str
    resolve_window_s: float
    # Wait for submits whose outcome is unknown (a cancel mid-submit), or leave them to
    # the sweep (a track that goes on, or is done, must not wait on them).
    resolve_unknown: bool = True


class CollectInput(BaseModel):
    """Download a finished job's audio, check it and store it at its final key, in one
    activity. (The tempo is measured by mastering, off the critical path.)"""

    track: TrackInput
    submission: Submission
    audio_url: str | None = None  # from the poll that saw the job finish, if it said


class CoverInput(BaseModel):
    track: TrackInput
    visual_version: int = 1


class MasterInput(BaseModel):
    track: TrackInput
    source_key: str


class RenditionsInput(BaseModel):
    track: TrackInput
    mastered: MasteredAudio | None = None  # None: mastering gave up
    reason: str | None = None


class CompleteInput(BaseModel):
    track: TrackInput
    stored: StoredTrack
    checked: CheckedAudio
    fallbacks: int = 0


class FinishInput(BaseModel):
    track: TrackInput
    status: JobStatus
    error_code: str | None = None
    message: str | None = None
