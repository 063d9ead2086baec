"""Activities that put the finished track's files in their final places."""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity

from activities.recording import recorded_attempt
from core.contracts import CheckedAudio, Step, TrackInput
from core.covers import draw_track_cover, store_generated_cover
from core.jobs import JobStore
from core.render_sandbox import sandbox_for
from core.settings import Settings
from core.storage import Storage, audio_key


class StoreAudioInput(BaseModel):
    track: TrackInput
    checked: CheckedAudio


class CoverInput(BaseModel):
    track: TrackInput
    visual_version: int = 1


class AssetActivities:
    def __init__(self, store: JobStore, storage: Storage, settings: Settings | None = None) -> None:
        self.store = store
        self.storage = storage
        # Covers follow the user's style seed only when STYLE_SEED_ENABLED.
        self.style_seed_enabled = settings.style_seed_enabled if settings else False
        # Even our own SVGs render under the operator's COVER_RENDER_* limits.
        self.sandbox = sandbox_for(settings)

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
            # SVG and PNG, drawn from the track row (its visual_version) and its user's
            # style seed; the PNG key is recorded on the track, the SVG key returned.
            drawn = await draw_track_cover(
                self.store.sessions,
                self.storage,
                track.track_id,
                style_seed_enabled=self.style_seed_enabled,
                sandbox=self.sandbox,
            )
            if drawn is None:  # no track row (not expected): draw from the input alone
                key, _ = await store_generated_cover(
                    self.storage,
                    track.user_id,
                    track.track_id,
                    track.request.prompt,
                    track.request.seed,
                    job.visual_version,
                )
                attempt.message = f"Cover stored at {key}"
                return key
            kept = " (the user's own cover, kept)" if drawn.skipped else ""
            attempt.message = f"Cover stored at {drawn.svg_key}{kept}"
            return drawn.svg_key
