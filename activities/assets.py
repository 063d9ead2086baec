"""Activities that put the finished track's files in their final places."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity

from activities.recording import recorded_attempt
from core.contracts import CheckedAudio, Step, TrackInput
from core.cover import render_cover_svg
from core.jobs import JobStore
from core.storage import Storage, audio_key, cover_key


class StoreAudioInput(BaseModel):
    track: TrackInput
    checked: CheckedAudio


class CoverInput(BaseModel):
    track: TrackInput
    visual_version: int = 1


class AssetActivities:
    def __init__(self, store: JobStore, storage: Storage) -> None:
        self.store = store
        self.storage = storage

    @activity.defn(name="store_audio")
    async def store_audio(self, job: StoreAudioInput) -> str:
        """Move checked audio from staging to `tracks/<user>/<track>.<ext>`.

        Copy-then-delete is safe to repeat: a retry after the copy finds the final object
        and only the staging cleanup is left.
        """
        track, staged = job.track, job.checked.staged
        async with recorded_attempt(
            self.store,
            track_id=track.track_id,
            job_id=track.job_id,
            event="audio_stored",
            provider=staged.provider,
            provider_run_id=staged.run_id,
        ) as attempt:
            await self.store.set_step(track.job_id, Step.STORING, 0.8)
            key = audio_key(track.user_id, track.track_id, staged.extension)
            if await self.storage.exists(staged.key):
                await self.storage.copy(staged.key, key)
            for leftover in await self.storage.list_keys(f"staging/{track.track_id}/"):
                await self.storage.delete(leftover)
            attempt.message = f"Audio stored at {key}"
            return key

    @activity.defn(name="store_cover")
    async def store_cover(self, job: CoverInput) -> str:
        track = job.track
        async with recorded_attempt(
            self.store, track_id=track.track_id, job_id=track.job_id, event="cover_stored"
        ) as attempt:
            await self.store.set_step(track.job_id, Step.COVER, 0.9)
            svg = render_cover_svg(track.request.prompt, track.request.seed, job.visual_version)
            key = cover_key(track.user_id, track.track_id)
            await self.storage.put_bytes(key, svg.encode(), "image/svg+xml")
            attempt.message = f"Cover stored at {key}"
            return key
