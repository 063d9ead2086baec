"""The local procedural provider: free, offline, deterministic music for any prompt.

Its "job" has no remote state: submit only names it, poll always says done, and the
render happens in download, chunk by chunk, heartbeating as it goes. A worker that dies
mid-render simply renders again from the same request and gets the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import soundfile as sf

from activities.providers.base import (
    DownloadedAudio,
    Heartbeat,
    JobState,
    MusicProvider,
    PollResult,
    ProviderError,
)
from core.contracts import ErrorCode, GenerationRequest, ProviderHealth, Submission
from engines.synth import (
    CHANNELS,
    SAMPLE_RATE,
    MusicPlan,
    SynthRenderer,
    plan_music,
)

__all__ = ["MODEL", "MusicPlan", "SynthProvider", "plan_music"]

MODEL = "procedural-v1"
MIN_DURATION_S = 1
MAX_DURATION_S = 600
# Audio rendered per chunk: one heartbeat and one slice of CPU work off the event loop.
CHUNK_FRAMES = SAMPLE_RATE


class SynthProvider(MusicProvider):
    name = "synth"

    def __init__(self, pace: float = 0.0) -> None:
        if pace < 0:
            raise ValueError("pace must be >= 0")
        # Wall-clock seconds per second of audio; lets tests stretch a render to kill a worker.
        self.pace = pace

    @property
    def configured(self) -> bool:
        return True

    def model_for(self, request: GenerationRequest) -> str | None:
        return MODEL

    def cannot_serve(self, request: GenerationRequest) -> str | None:
        # Vocals are "sung" by a voice-like lead, so only absurd lengths are refused.
        if not MIN_DURATION_S <= request.duration_s <= MAX_DURATION_S:
            return (
                f"duration {request.duration_s} s is outside {MIN_DURATION_S}..{MAX_DURATION_S} s"
            )
        return None

    @property
    def remote(self) -> bool:
        return False

    async def submit(
        self,
        request: GenerationRequest,
        *,
        track_id: str,
        token: str | None = None,
        webhook_url: str | None = None,
    ) -> tuple[str, dict[str, str]]:
        digest = hashlib.sha256(f"{request.model_dump_json()}\x00{track_id}".encode())
        return f"synth-{digest.hexdigest()[:16]}", {}

    async def poll(self, submission: Submission) -> PollResult:
        return PollResult(JobState.SUCCEEDED, progress=1.0)

    async def download(
        self,
        submission: Submission,
        dest: Path,
        heartbeat: Heartbeat,
        audio_url: str | None = None,
    ) -> DownloadedAudio:
        """Render the track to a 44.1 kHz stereo 16-bit WAV at dest, chunk by chunk."""
        request = submission.request
        reason = self.cannot_serve(request)
        if reason is not None:
            raise ProviderError(ErrorCode.UNSUPPORTED, reason)
        renderer = await asyncio.to_thread(SynthRenderer, plan_music(request))
        total = renderer.total_frames
        with sf.SoundFile(
            dest, "w", samplerate=SAMPLE_RATE, channels=CHANNELS, format="WAV", subtype="PCM_16"
        ) as out:
            for start in range(0, total, CHUNK_FRAMES):
                frames = min(CHUNK_FRAMES, total - start)
                began = time.monotonic()
                # DSP and file write run in a thread so the worker's event loop stays free.
                await asyncio.to_thread(_render_chunk, renderer, out, start, frames)
                heartbeat((start + frames) / total)
                if self.pace > 0:
                    spent = time.monotonic() - began
                    await asyncio.sleep(max(0.0, self.pace * frames / SAMPLE_RATE - spent))
        return DownloadedAudio("wav", "audio/wav")

    async def cancel(self, submission: Submission) -> None:
        return None

    async def health(self) -> ProviderHealth:
        return ProviderHealth(status="ok")


def _render_chunk(renderer: SynthRenderer, out: sf.SoundFile, start: int, frames: int) -> None:
    out.write(renderer.render(start, frames))
