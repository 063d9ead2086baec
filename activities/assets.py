"""Activities that put the finished track's files in their final places."""

from __future__ import annotations

import tempfile
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating
from activities.mastering_processes import MasteringProcesses
from activities.recording import recorded_attempt
from core.contracts import (
    CoverInput,
    ErrorCode,
    MasteredAudio,
    MasterInput,
    Rendition,
    RenditionsInput,
)
from core.settings import Settings
from core.storage import Storage, rendition_key
from domain.covers import draw_track_cover, store_generated_cover
from domain.tracks.jobs import JobStore
from engines.audio import AudioDecodeError
from engines.render_sandbox import sandbox_for

# Stored rendition names, by format: `tracks/<user>/<track>.<name>.<format>`.
RENDITION_NAMES = {"flac": "master", "mp3": "stream"}


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _lufs(value: float | None) -> str:
    return "silent" if value is None else f"{value:.1f} LUFS"


def _mastering_summary(mastered: MasteredAudio) -> str:
    """The job log's line: loudness before and after, true peak, each file's size."""
    peak = mastered.true_peak_after_dbtp
    files = ", ".join(
        r.format.upper()
        + (f" {r.bitrate_kbps} kbps" if r.bitrate_kbps else "")
        + f" {_megabytes(r.size_bytes)}"
        for r in mastered.renditions
    )
    return (
        f"Mastered: loudness {_lufs(mastered.loudness_before_lufs)} -> "
        f"{_lufs(mastered.loudness_after_lufs)}"
        + ("" if peak is None else f", true peak {peak:.1f} dBTP")
        + f"; {files}"
    )


class AssetActivities:
    def __init__(self, store: JobStore, storage: Storage, settings: Settings | None = None) -> None:
        self.store = store
        self.storage = storage
        self.settings = settings or Settings()
        # Covers follow the user's style seed only when STYLE_SEED_ENABLED.
        self.style_seed_enabled = settings.style_seed_enabled if settings else False
        # Even our own SVGs render under the operator's COVER_RENDER_* limits.
        self.sandbox = sandbox_for(settings)
        # Off the critical path: processes of their own at the lowest CPU priority, so a
        # burst of finished tracks never slows the tracks still on their way to COMPLETE.
        self.mastering = MasteringProcesses(self.settings.worker_max_concurrent_mastering)

    @activity.defn(name="store_cover")
    async def store_cover(self, job: CoverInput) -> str:
        track = job.track
        async with recorded_attempt(
            self.store, track_id=track.track_id, job_id=track.job_id, event="cover_stored"
        ) as attempt:
            # Storing the audio moved the job to the cover step.
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

    @activity.defn(name="master_audio")
    async def master_audio(self, job: MasterInput) -> MasteredAudio:
        """Master the stored audio to the loudness target and store a lossless FLAC and an
        MP3 stream beside it. The same input always gives the same bytes at the same keys,
        so a retry rewrites identical files; the provider's file is left in place."""
        track = job.track
        async with recorded_attempt(
            self.store, track_id=track.track_id, job_id=track.job_id, event="audio_mastered"
        ) as attempt:
            # A cancelled attempt leaves its thread writing here: cleanup must not fail.
            # Heartbeats cover the downloads and uploads too (a 5-minute master is ~70 MB).
            with tempfile.TemporaryDirectory(
                prefix="sf-master-", ignore_cleanup_errors=True
            ) as tmp:
                async with heartbeating():
                    mastered = await self._master(job, Path(tmp))
            attempt.message = _mastering_summary(mastered)
            attempt.data = mastered.model_dump(mode="json", exclude={"renditions"})
            return mastered

    async def _master(self, job: MasterInput, tmp: Path) -> MasteredAudio:
        track, s = job.track, self.settings
        source = tmp / f"source.{job.source_key.rsplit('.', 1)[-1]}"
        await self.storage.download(job.source_key, source)
        try:
            report, bpm = await self.mastering.master(
                source=source,
                workdir=tmp,
                target_lufs=s.master_target_lufs,
                ceiling_dbtp=s.master_ceiling_dbtp,
                mp3_bitrate_kbps=s.mp3_bitrate_kbps,
            )
        except (AudioDecodeError, RuntimeError) as exc:
            # The check decoded this file; failing now is not worth retrying.
            raise ApplicationError(
                f"audio could not be mastered: {exc}",
                type=ErrorCode.BAD_AUDIO.value,
                non_retryable=True,
            ) from exc
        renditions = []
        # The stream first: it is what plays, and it is the smaller file.
        for made in sorted(report.renditions, key=lambda r: r.format != "mp3"):
            key = rendition_key(
                track.user_id, track.track_id, RENDITION_NAMES[made.format], made.format
            )
            await self.storage.put_file(key, made.path, made.content_type)
            renditions.append(
                Rendition(
                    format=made.format,
                    key=key,
                    content_type=made.content_type,
                    bitrate_kbps=made.bitrate_kbps,
                    size_bytes=made.size_bytes,
                    sample_rate=made.sample_rate,
                    channels=made.channels,
                    duration_s=round(made.duration_s, 3),
                )
            )
        renditions.sort(key=lambda r: r.format != "flac")  # listed master first
        return MasteredAudio(
            source_key=job.source_key,
            renditions=renditions,
            loudness_before_lufs=report.loudness_before_lufs,
            true_peak_before_dbtp=report.true_peak_before_dbtp,
            loudness_after_lufs=report.loudness_after_lufs,
            true_peak_after_dbtp=report.true_peak_after_dbtp,
            gain_db=report.gain_db,
            bpm=bpm,
        )

    @activity.defn(name="record_renditions")
    async def record_renditions(self, job: RenditionsInput) -> bool:
        """Switch the track to its mastered files (then drop the provider's file, now
        replaced), or record that mastering gave up and the provider's file stays."""
        track = job.track
        run_id = activity.info().workflow_run_id
        if job.mastered is None:
            if await self.store.renditions_failed(track.job_id):
                # Whatever a stopped attempt stored is not the track's: the original stays.
                for fmt, name in RENDITION_NAMES.items():
                    await self.storage.delete(
                        rendition_key(track.user_id, track.track_id, name, fmt)
                    )
                await self.store.add_event(
                    track.job_id,
                    "renditions_failed",
                    f"No mastered files ({job.reason}); the original audio stays",
                    level="warning",
                )
            return False
        mastered = job.mastered
        if not await self.store.record_renditions(track.job_id, mastered, run_id=run_id):
            return False
        if mastered.source_key not in {r.key for r in mastered.renditions}:
            await self.storage.delete(mastered.source_key)
        return True
