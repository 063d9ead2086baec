"""Generation activities: submit a paid job, look at it, collect and check what came back.

Submit goes through the submission ledger (activities.submissions), so however often it
runs it pays at most once, and it looks at the new job once before answering. The
workflow waits between short polls on a durable timer (or a provider webhook's signal),
so a waiting track holds no worker slot; `collect_audio` then downloads the audio, checks
it and stores it at the track's audio key.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from temporalio import activity

from activities.heartbeat import heartbeating
from activities.providers.base import DownloadedAudio, JobState, MusicProvider, ProviderError
from activities.providers.registry import ProviderRegistry
from activities.recording import Attempt, recorded_attempt
from core.contracts import (
    AudioInfo,
    CancelInput,
    CheckedAudio,
    CollectInput,
    ErrorCode,
    PollStatus,
    Step,
    StoredAudio,
    Submission,
    SubmissionState,
    SubmitInput,
    TrackInput,
)
from core.logging import get_logger
from core.metrics import (
    count_fallback,
    count_poll,
    observe_capacity_wait,
    seconds_since,
    set_in_flight,
)
from core.settings import Settings
from core.storage import Storage, audio_key
from domain.providers.pay_once import ProviderJobs
from domain.tracks.jobs import JobStore
from domain.tracks.submissions import SubmissionLedger
from engines.audio import AudioDecodeError, analyze, quality_problem

log = get_logger("soundfoundry.generation")


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
        self.ledger = SubmissionLedger(store.sessions)
        self.jobs = ProviderJobs(self.ledger, store, providers, settings)

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
            submission = await self.jobs.submit(
                track,
                provider,
                number=submit.submission_number,
                max_paid=submit.max_paid,
                resolve_window_s=submit.resolve_window_s,
                heartbeat=activity.heartbeat,
                workflow_run_id=activity.info().workflow_run_id,
                already_waiting=submit.waiting_since is not None,
            )
            attempt.provider_run_id = submission.run_id
            # With a webhook expected the provider tells us when the job ends: looking
            # right away would cost every track a request to spare the fastest a wait.
            look = provider.remote and not submission.webhook
            if look and await self._finished_at_once(submission):
                submission = submission.model_copy(update={"done": True})
            # Not the token: it addresses the submission's webhook, and users read this.
            attempt.message = (
                f"Using provider: {provider.name} (model {submission.model}), "
                f"run {submission.run_id}"
            )
            attempt.data = {"number": submit.submission_number}
            if submit.waiting_since is not None:
                observe_capacity_wait(provider.name, seconds_since(submit.waiting_since))
            set_in_flight(await self.ledger.in_flight())
            return submission

    async def _finished_at_once(self, submission: Submission) -> bool:
        """One look at a job just submitted. Its errors are the workflow's polls' to see:
        the job is paid for, so nothing here may fail the submit."""
        provider = self.providers.get(submission.provider)
        count_poll(provider.name)
        try:
            status = await provider.poll(submission)
        except ProviderError as exc:
            log.info("first look failed; the workflow polls", error_code=exc.code.value)
            return False
        return status.state is JobState.SUCCEEDED

    @activity.defn(name="poll_generation")
    async def poll_generation(self, submission: Submission) -> PollStatus:
        """One look at the provider's job; the workflow waits between looks."""
        provider = self.providers.get(submission.provider)
        if not provider.remote:
            return PollStatus(done=True, progress=1.0)
        async with self._attempt_on(submission, "polled", record_success=False):
            count_poll(provider.name)
            status = await provider.poll(submission)
            if status.state is JobState.SUCCEEDED:
                return PollStatus(done=True, progress=1.0, audio_url=status.audio_url)
            if status.state in (JobState.FAILED, JobState.CANCELLED):
                # Ended at the provider: nothing left to cancel there.
                await self._mark(submission, SubmissionState.FINISHED)
                _raise_for(status.state, status.error)
            return PollStatus(done=False, progress=status.progress)

    @activity.defn(name="collect_audio")
    async def collect_audio(self, collect: CollectInput) -> CheckedAudio:
        """Download a finished job's audio (or render the synth's), check it, and store
        it at the track's audio key only if it passes: one activity, one local file."""
        submission, track = collect.submission, collect.track
        provider = self.providers.get(submission.provider)
        with tempfile.TemporaryDirectory(prefix="sf-collect-") as tmp:
            async with self._attempt_on(submission, "audio_ready") as attempt:
                path, audio = await self._download(
                    provider, submission, Path(tmp), audio_url=collect.audio_url
                )
                await self._mark(submission, SubmissionState.FINISHED)
                size = path.stat().st_size
                attempt.message = f"Audio ready from {provider.name} ({size} bytes)"
                attempt.next_step = (Step.CHECKING, 0.7)
            async with self._checking(track, provider.name, submission.run_id) as attempt:
                info = await self._analyze(path, track)
                attempt.message = _audio_ok(info)
            return await self._store_checked(track, provider, submission, path, audio, size, info)

    async def _store_checked(
        self,
        track: TrackInput,
        provider: MusicProvider,
        submission: Submission,
        path: Path,
        audio: DownloadedAudio,
        size: int,
        info: AudioInfo,
    ) -> CheckedAudio:
        """Checked audio to `tracks/<user>/<track>.<ext>`. A retry writes the same
        provider file to the same key again."""
        async with self._attempt_on(submission, "audio_stored") as attempt:
            key = audio_key(track.user_id, track.track_id, audio.extension)
            stored = await self._put(provider, submission, key, path, audio, size)
            attempt.message = f"Audio stored at {key}"
            attempt.next_step = (Step.COVER, 0.9)
        return CheckedAudio(audio=stored, info=info)

    @activity.defn(name="cancel_submissions")
    async def cancel_submissions(self, cancel: CancelInput) -> list[str]:
        """Stop every provider job of this track that is still open, from the ledger."""
        track = cancel.track
        async with recorded_attempt(
            self.store, track_id=track.track_id, job_id=track.job_id, event="provider_cleanup"
        ) as attempt:
            stopped = await self.jobs.cancel_open(
                track.job_id,
                track.request,
                reason=cancel.reason,
                window_s=cancel.resolve_window_s,
                heartbeat=activity.heartbeat,
                resolve_unknown=cancel.resolve_unknown,
            )
            attempt.message = (
                f"Cancelled {len(stopped)} provider job(s) ({cancel.reason})"
                if stopped
                else f"No provider job left running ({cancel.reason})"
            )
            return stopped

    @staticmethod
    async def _analyze(path: Path, track: TrackInput) -> AudioInfo:
        """Decode the audio and reject it if broken, silent or the wrong length. (The
        tempo is left to mastering, off the critical path.)"""
        try:
            async with heartbeating():
                info = await asyncio.to_thread(analyze, path, tempo=False)
        except AudioDecodeError as exc:
            raise ProviderError(ErrorCode.BAD_AUDIO, f"audio does not decode: {exc}") from exc
        problem = quality_problem(info, track.request.duration_s)
        if problem:
            raise ProviderError(ErrorCode.BAD_AUDIO, f"audio failed the check: {problem}")
        return info

    def _attempt_on(
        self, submission: Submission, event: str, *, record_success: bool = True
    ) -> AbstractAsyncContextManager[Attempt]:
        """The job log entry for one attempt at something done to a provider's job."""
        return recorded_attempt(
            self.store,
            track_id=submission.track_id,
            job_id=submission.job_id,
            event=event,
            provider=submission.provider,
            provider_run_id=submission.run_id,
            record_success=record_success,
        )

    @asynccontextmanager
    async def _checking(
        self, track: TrackInput, provider: str, run_id: str
    ) -> AsyncIterator[Attempt]:
        """The job log entry for checking a provider's audio (the job is in the checking
        step already); passing moves the job on to storing."""
        async with recorded_attempt(
            self.store,
            track_id=track.track_id,
            job_id=track.job_id,
            event="audio_checked",
            provider=provider,
            provider_run_id=run_id,
        ) as attempt:
            attempt.next_step = (Step.STORING, 0.8)
            yield attempt

    async def _download(
        self,
        provider: MusicProvider,
        submission: Submission,
        folder: Path,
        *,
        audio_url: str | None = None,
    ) -> tuple[Path, DownloadedAudio]:
        dest = folder / "audio"
        return dest, await provider.download(submission, dest, self._heartbeat, audio_url)

    async def _put(
        self,
        provider: MusicProvider,
        submission: Submission,
        key: str,
        path: Path,
        audio: DownloadedAudio,
        size: int,
    ) -> StoredAudio:
        await self.storage.put_file(key, path, audio.content_type)
        return StoredAudio(
            provider=provider.name,
            run_id=submission.run_id,
            key=key,
            extension=audio.extension,
            content_type=audio.content_type,
            size_bytes=size,
        )

    async def _mark(self, submission: Submission, state: SubmissionState) -> None:
        if submission.token:
            await self.ledger.set_state_by_token(
                submission.token,
                state,
                only_from=(SubmissionState.ACCEPTED, SubmissionState.RESOLVED),
            )
            if self.jobs.max_in_flight(submission.provider):
                set_in_flight(await self.ledger.in_flight())

    @staticmethod
    def _heartbeat(fraction: float) -> None:
        activity.heartbeat(fraction)


def _audio_ok(info: AudioInfo) -> str:
    return (
        f"Audio ok: {info.duration_s:.1f} s, {info.sample_rate} Hz, "
        f"{info.channels} ch, peak {info.peak_dbfs:.1f} dBFS"
    )


def _raise_for(state: JobState, error: str | None) -> None:
    if state is JobState.FAILED:
        raise ProviderError(ErrorCode.JOB_FAILED, error or "provider job failed")
    if state is JobState.CANCELLED:
        raise ProviderError(ErrorCode.JOB_CANCELLED, "provider job was cancelled")
