"""The interface every music provider implements, and the errors it raises.

A generation is always submit → poll → download, so a crashed worker can resume a paid
job by its id instead of paying for a second one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from core.contracts import GenerationRequest, ProviderHealth, Submission
from domain.providers.port import ProviderError

__all__ = [
    "DownloadedAudio",
    "Heartbeat",
    "JobState",
    "MusicProvider",
    "PollResult",
    "ProviderError",
]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class PollResult:
    state: JobState
    progress: float | None = None
    error: str | None = None
    audio_url: str | None = None  # a finished job's audio, when the answer names it


@dataclass(frozen=True)
class DownloadedAudio:
    extension: str  # without the dot: "wav", "mp3", "flac"
    content_type: str


Heartbeat = Callable[[float], None]
"""Called with a 0..1 progress figure while long work goes on."""


class MusicProvider(ABC):
    name: str

    @property
    @abstractmethod
    def configured(self) -> bool:
        """False when the provider has no credentials."""

    @abstractmethod
    def model_for(self, request: GenerationRequest) -> str | None:
        """The model that would serve this request."""

    @abstractmethod
    def cannot_serve(self, request: GenerationRequest) -> str | None:
        """Why this provider cannot serve the request (too long, no vocals), or None."""

    @property
    def remote(self) -> bool:
        """True when jobs run at the provider and must be polled; False when the whole
        render happens in `download` (the local synth)."""
        return True

    @abstractmethod
    async def submit(
        self,
        request: GenerationRequest,
        *,
        track_id: str,
        token: str | None = None,
        webhook_url: str | None = None,
    ) -> tuple[str, dict[str, str]]:
        """Start a paid job with exactly one request; return its id and follow-up URLs.

        Never re-sends: a failure after the request left raises ProviderError with
        `sent=True`, and the caller resolves it instead of trying again.
        """

    async def find_submission(
        self, request: GenerationRequest, *, since: datetime, exclude: set[str]
    ) -> str | None:
        """The run id of a job we submitted for `request` at or after `since` whose
        answer was lost, from the provider's own records; None if it cannot tell."""
        return None

    @abstractmethod
    async def poll(self, submission: Submission) -> PollResult: ...

    @abstractmethod
    async def download(
        self,
        submission: Submission,
        dest: Path,
        heartbeat: Heartbeat,
        audio_url: str | None = None,
    ) -> DownloadedAudio:
        """Write the finished audio to `dest`. Only called after poll says SUCCEEDED;
        `audio_url` is that poll's `PollResult.audio_url`, when it had one."""

    @abstractmethod
    async def cancel(self, submission: Submission) -> None: ...

    @abstractmethod
    async def health(self) -> ProviderHealth: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients bound to the current event loop."""
