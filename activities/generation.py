"""Generation activities: submit a paid job, wait for it, check what came back.

Submit is short and returns the provider's id, so Temporal records the id before anything
waits on it. Waiting is a separate heartbeating activity that resumes by that id, so a
worker that dies mid-way costs a poll, never a second submission.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from pydantic import BaseModel
from temporalio import activity

from activities.providers.base import ErrorCode, JobState, ProviderError
from activities.providers.registry import ProviderRegistry
from activities.recording import recorded_attempt
from core.audio import AudioDecodeError, analyze, quality_problem
from core.contracts import CheckedAudio, StagedAudio, Step, Submission, TrackInput
from core.jobs import JobStore
from core.logging import get_logger
from core.metrics import count_fallback
from core.settings import Settings
from core.storage import Storage, staging_key

log = get_logger("soundfoundry.generation")


class SubmitInput(BaseModel):
    track: TrackInput
    provider: str
    submission_number: int
    # The provider that failed before this one, so the job log shows the fallback.
    falling_back_from: str | None = None


class CheckInput(BaseModel):
    track: TrackInput
    staged: StagedAudio


class GenerationActivities:
    def __init__(
        self,
        store: JobStore,
        storage: Storage,
        providers: ProviderRegistry,
        settings: Settings,
    ) -> None:
        self.store = store
        self.storage = storage
        self.providers = providers
        self.settings = settings

    @activity.defn(name="submit_generation")
    async def submit_generation(self, submit: SubmitInput) -> Submission:
        track = submit.track
        provider = self.providers.get(submit.provider)
        async with recorded_attempt(
            self.store,
            track_id=track.track_id,
            job_id=track.job_id,
            event="submitted",
            provider=provider.name,
        ) as attempt:
            await self.store.set_step(
                track.job_id, Step.GENERATING, 0.1, attempts=submit.submission_number
            )
            if submit.falling_back_from and activity.info().attempt == 1:
                message = f"Falling back to {provider.name} after {submit.falling_back_from}"
                await self.store.add_event(
                    track.job_id, "fallback", message, level="warning", provider=provider.name
                )
                log.warning(message, provider=provider.name)
                # falling_back_from reads "fal (http_403)"; the label is the provider alone.
                count_fallback(submit.falling_back_from.split(" ", 1)[0], provider.name)
            log.info(f"Using provider: {provider.name}", provider=provider.name)
            run_id, urls = await provider.submit(track.request, track_id=str(track.track_id))
            attempt.provider_run_id = run_id
            model = provider.model_for(track.request)
            attempt.message = f"Using provider: {provider.name} (model {model}), run {run_id}"
            return Submission(
                track_id=track.track_id,
                job_id=track.job_id,
                provider=provider.name,
                model=model,
                run_id=run_id,
                request=track.request,
                urls=urls,
            )

    @activity.defn(name="await_generation")
    async def await_generation(self, submission: Submission) -> StagedAudio:
        """Poll the provider's job by id until it is done, then stage its audio."""
        provider = self.providers.get(submission.provider)
        async with recorded_attempt(
            self.store,
            track_id=submission.track_id,
            job_id=submission.job_id,
            event="audio_ready",
            provider=provider.name,
            provider_run_id=submission.run_id,
        ) as attempt:
            # A cancelled job raises CancelledError at the next await; the workflow then
            # cancels the provider's job with cancel_generation.
            await self._wait_until_done(submission)
            with tempfile.TemporaryDirectory(prefix="sf-gen-") as tmp:
                dest = Path(tmp) / "audio"
                audio = await provider.download(submission, dest, self._heartbeat)
                key = staging_key(
                    submission.track_id, provider.name, submission.run_id, audio.extension
                )
                await self.storage.put_file(key, dest, audio.content_type)
                size = dest.stat().st_size
            attempt.message = f"Audio ready from {provider.name} ({size} bytes)"
            return StagedAudio(
                provider=provider.name,
                run_id=submission.run_id,
                key=key,
                extension=audio.extension,
                content_type=audio.content_type,
                size_bytes=size,
            )

    @activity.defn(name="cancel_generation")
    async def cancel_generation(self, submission: Submission) -> None:
        provider = self.providers.get(submission.provider)
        async with recorded_attempt(
            self.store,
            track_id=submission.track_id,
            job_id=submission.job_id,
            event="provider_cancelled",
            provider=provider.name,
            provider_run_id=submission.run_id,
        ) as attempt:
            await provider.cancel(submission)
            attempt.message = f"Cancelled {provider.name} job {submission.run_id}"

    @activity.defn(name="check_audio")
    async def check_audio(self, check: CheckInput) -> CheckedAudio:
        """Decode the staged audio and reject it if broken, silent or the wrong length."""
        staged, track = check.staged, check.track
        async with recorded_attempt(
            self.store,
            track_id=track.track_id,
            job_id=track.job_id,
            event="audio_checked",
            provider=staged.provider,
            provider_run_id=staged.run_id,
        ) as attempt:
            await self.store.set_step(track.job_id, Step.CHECKING, 0.7)
            with tempfile.TemporaryDirectory(prefix="sf-check-") as tmp:
                path = Path(tmp) / f"audio.{staged.extension}"
                await self.storage.download(staged.key, path)
                try:
                    info = await asyncio.to_thread(analyze, path)
                except AudioDecodeError as exc:
                    raise ProviderError(
                        ErrorCode.BAD_AUDIO, f"audio does not decode: {exc}"
                    ) from exc
            problem = quality_problem(info, track.request.duration_s)
            if problem:
                raise ProviderError(ErrorCode.BAD_AUDIO, f"audio failed the check: {problem}")
            attempt.message = (
                f"Audio ok: {info.duration_s:.1f} s, {info.sample_rate} Hz, "
                f"{info.channels} ch, peak {info.peak_dbfs:.1f} dBFS"
            )
            return CheckedAudio(staged=staged, info=info)

    async def _wait_until_done(self, submission: Submission) -> None:
        provider = self.providers.get(submission.provider)
        while True:
            status = await provider.poll(submission)
            activity.heartbeat(status.progress or 0.0)
            if status.state is JobState.SUCCEEDED:
                return
            if status.state is JobState.FAILED:
                raise ProviderError(ErrorCode.JOB_FAILED, status.error or "provider job failed")
            if status.state is JobState.CANCELLED:
                raise ProviderError(ErrorCode.JOB_CANCELLED, "provider job was cancelled")
            await asyncio.sleep(self.settings.poll_interval_s)

    @staticmethod
    def _heartbeat(fraction: float) -> None:
        activity.heartbeat(fraction)
