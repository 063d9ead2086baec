"""A finished track's files as clients see them: one entry per format, with its link.

Stored renditions (the FLAC master, the MP3 stream, or the provider's file before
mastering) are signed by the storage backend. WAV is never stored: its link is signed
here and served by `api.routes.downloads`, which decodes the master on request.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Literal
from urllib.parse import urlencode

from api.schemas import RenditionOut
from core.contracts import Rendition
from core.models import Track
from core.settings import Settings
from core.signing import WAV, LinkSigner
from core.storage import Storage

DownloadFormat = Literal["flac", "mp3", "wav"]
WAV_CONTENT_TYPE = "audio/wav"


def download_name(track: Track, extension: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", track.prompt.lower()).strip("-")[:48] or "track"
    return f"{slug}.{extension}"


def stored_renditions(track: Track) -> list[Rendition]:
    """The track's stored files, lossless master first; before mastering (or for tracks
    made before it existed) the provider's file alone."""
    if track.renditions:
        return [Rendition.model_validate(r) for r in track.renditions]
    if not track.audio_key:
        return []
    return [
        Rendition(
            format=track.audio_key.rsplit(".", 1)[-1],
            key=track.audio_key,
            content_type=track.audio_content_type or "application/octet-stream",
            size_bytes=0,
            sample_rate=track.sample_rate or 0,
            channels=track.channels or 0,
            duration_s=track.audio_duration_s or 0.0,
        )
    ]


def lossless_master(track: Track) -> Rendition | None:
    return next((r for r in stored_renditions(track) if r.format == "flac"), None)


def _signer(settings: Settings) -> LinkSigner:
    return LinkSigner(settings.secret_key.get_secret_value())


def wav_link(settings: Settings, track: Track, ttl_s: int) -> str:
    # The link carries the track and expiry only, both signed: the route names the file
    # from the track, so there is no name for anyone to change.
    expires = int(time.time()) + ttl_s
    query = {"expires": str(expires), "sig": _signer(settings).sign(WAV, expires, str(track.id))}
    return f"{settings.public_base_url.rstrip('/')}/downloads/{track.id}.wav?{urlencode(query)}"


def wav_link_valid(settings: Settings, track_id: uuid.UUID, expires: int, sig: str) -> bool:
    return _signer(settings).verify(WAV, sig, expires, str(track_id))


async def renditions_out(storage: Storage, settings: Settings, track: Track) -> list[RenditionOut]:
    """Every format the track can be downloaded in, each with a signed link."""
    ttl = settings.signed_url_ttl_s
    out = []
    for rendition in stored_renditions(track):
        url = await storage.signed_url(rendition.key, ttl, download_name(track, rendition.format))
        out.append(
            RenditionOut(
                format=rendition.format,
                content_type=rendition.content_type,
                bitrate_kbps=rendition.bitrate_kbps,
                size_bytes=rendition.size_bytes or None,
                sample_rate=rendition.sample_rate or None,
                channels=rendition.channels or None,
                duration_s=rendition.duration_s or None,
                stored=True,
                url=url,
            )
        )
    master = lossless_master(track)
    if master is not None:
        out.append(
            RenditionOut(
                format="wav",
                content_type=WAV_CONTENT_TYPE,
                size_bytes=None,
                sample_rate=master.sample_rate,
                channels=master.channels,
                duration_s=master.duration_s,
                stored=False,
                url=wav_link(settings, track, ttl),
            )
        )
    return out
