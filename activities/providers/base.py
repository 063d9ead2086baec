"""The interface every music provider implements, and the errors it raises.

A generation is always submit → poll → download, so a crashed worker can resume a paid
job by its id instead of paying for a second one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from core.contracts import GenerationRequest, ProviderHealth, Submission
from domain.providers.port import PaidProvider, ProviderError

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


class MusicProvider(PaidProvider, ABC):
    """A music provider: the paid-job port (submit, find, cancel) plus polling,
    downloading and health."""

    name: str

    @property
    @abstractmethod
    def configured(self) -> bool:
        """False when the provider has no credentials."""

    @abstractmethod
    def cannot_serve(self, request: GenerationRequest) -> str | None:
        """Why this provider cannot serve the request (too long, no vocals), or None."""

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
    async def health(self) -> ProviderHealth: ...

    async def aclose(self) -> None:
        """Release clients bound to the current event loop."""
