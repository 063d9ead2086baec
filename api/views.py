"""What the API shows of a track and a job: the rows as response models, with signed links."""

from __future__ import annotations

from api.deps import Services
from api.downloads import download_name, renditions_out
from api.schemas import JobOut, TrackOut
from core.contracts import JobStatus
from core.models import Job, Track


def job_out(services: Services, job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        track_id=job.track_id,
        status=job.status,
        step=job.step,
        progress=job.progress,
        attempts=job.attempts,
        credits_reserved=job.credits_reserved,
        credits_refunded=job.credits_refunded,
        error_code=job.error_code,
        error_message=job.error_message,
        workflow_id=job.workflow_id,
        run_id=job.run_id,
        temporal_ui_url=services.temporal.ui_url(job.workflow_id),
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
    )


async def track_out(services: Services, track: Track, job: Job) -> TrackOut:
    ttl = services.settings.signed_url_ttl_s
    file_url = cover_url = None
    audio = None
    renditions = []
    if track.status == JobStatus.COMPLETE and track.audio_key:
        extension = track.audio_key.rsplit(".", 1)[-1]
        file_url = await services.storage.signed_url(
            track.audio_key, ttl, download_name(track, extension)
        )
        renditions = await renditions_out(services.storage, services.settings, track)
        audio = {
            "duration_s": track.audio_duration_s,
            "sample_rate": track.sample_rate,
            "channels": track.channels,
            "peak_dbfs": track.peak_dbfs,
            "rms_dbfs": track.rms_dbfs,
            "loudness_lufs": track.loudness_lufs,
            "true_peak_dbtp": track.true_peak_dbtp,
            "bpm": track.bpm,
            "content_type": track.audio_content_type,
            "peaks": track.peaks,
        }
    if track.cover_key:
        cover_url = await services.storage.signed_url(track.cover_key, ttl)
    return TrackOut(
        id=track.id,
        job_id=job.id,
        status=track.status,
        prompt=track.prompt,
        duration_s=track.duration_s,
        has_vocals=track.has_vocals,
        style_strength=track.style_strength,
        lyrics=track.lyrics,
        seed=track.seed,
        provider=track.provider,
        visual_version=track.visual_version,
        created_at=track.created_at,
        file_url=file_url,
        renditions=renditions,
        renditions_state=track.renditions_state,
        cover_url=cover_url,
        audio=audio,
        cover_source=track.cover_source,
        series_id=track.series_id,
    )
