"""HTTP helpers shared by the hosted providers (fal, Replicate).

Kept apart from the provider modules so neither imports the other's client library.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import httpx

from activities.providers.base import DownloadedAudio, Heartbeat, ProviderError
from core.contracts import ErrorCode
from core.egress import MAX_REDIRECTS, EgressPolicy, EgressRefused, open_vetted
from core.settings import Settings


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every short-lived client: building one loads the
    CA bundle, which costs more CPU than a whole request to a provider."""
    return httpx.create_ssl_context()


_AUDIO_TYPES = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/ogg": "ogg",
    "audio/mp4": "m4a",
    "audio/aac": "aac",
}
_CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
}
T = TypeVar("T")
_CHUNK = 64 * 1024
_HEARTBEAT_EVERY_S = 0.25


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def shorten(value: object, limit: int = 300) -> str:
    """One line of at most `limit` characters, for error messages."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problem_detail(response: httpx.Response) -> str:
    """The human part of an error answer: a JSON problem's detail/title/error, else the text."""
    try:
        body = response.json()
    except ValueError:
        return shorten(response.text)
    if isinstance(body, dict):
        return shorten(body.get("detail") or body.get("title") or body.get("error") or body)
    return shorten(body)


def client_timeout(seconds: float) -> httpx.Timeout:
    """`seconds` for each read, write and pool wait, at most 10 s of it to connect."""
    return httpx.Timeout(seconds, connect=min(10.0, seconds))


class LoopLocal(Generic[T]):
    """One client per event loop: the provider libraries bind their httpx client to the
    loop that first used it."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            # A client left by a loop that closed without `pop` can never be closed now;
            # drop it so it does not keep that loop alive through the weak mapping.
            for stale in [other for other in self._items if other.is_closed()]:
                del self._items[stale]
            item = self._items[loop] = self._make()
        return item

    def pop(self) -> T | None:
        return self._items.pop(asyncio.get_running_loop(), None)


def audio_extension(content_type: str | None, url: str) -> str | None:
    """The file extension for an audio response, from its content type or URL."""
    if content_type:
        ext = _AUDIO_TYPES.get(content_type.split(";")[0].strip().lower())
        if ext:
            return ext
    suffix = Path(urlsplit(url).path).suffix.lower().lstrip(".")
    return suffix if suffix in _CONTENT_TYPES else None


DEFAULT_DOWNLOAD_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class DownloadRules:
    """Bounds on a provider's audio download: its size, and where it may lead."""

    max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES
    egress: EgressPolicy = field(default_factory=EgressPolicy)

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadRules:
        return cls(
            settings.provider_download_max_bytes,
            EgressPolicy.of(settings.provider_download_allowed_hosts),
        )


async def stream_audio(
    url: str,
    dest: Path,
    heartbeat: Heartbeat,
    *,
    label: str,
    timeout_s: float,
    rules: DownloadRules,
    hinted_type: str | None = None,
    redact: Callable[[str], str] = str,
) -> DownloadedAudio:
    """Stream `url` to `dest`, heartbeating; `dest` appears only once complete.

    The audio lives on a CDN, not the API host, so no credentials are sent with it. Each
    hop (the URL and every redirect) must resolve to a public address under the rules'
    egress policy and is connected to at the address vetted; a body over the rules'
    `max_bytes` (declared or counted) is refused and nothing of it is kept.
    """
    max_bytes = rules.max_bytes
    part = dest.with_name(dest.name + ".part")
    timeout = client_timeout(timeout_s)
    written = 0
    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, verify=tls_context()
            ) as http,
            open_vetted(
                http,
                "GET",
                url,
                rules.egress,
                # Asked uncompressed: a compressed body is counted as it inflates, but
                # need not be inflated at all.
                headers={"Accept-Encoding": "identity"},
                max_redirects=MAX_REDIRECTS,
            ) as response,
        ):
            if response.status_code >= 400:
                raise ProviderError.from_status(
                    response.status_code,
                    redact(f"{label} audio download: HTTP {response.status_code}"),
                    retry_after_s=parse_retry_after(response.headers.get("retry-after")),
                )
            header_type = response.headers.get("content-type")
            ext = audio_extension(header_type, url) or audio_extension(hinted_type, url)
            if ext is None:
                raise ProviderError(
                    ErrorCode.BAD_AUDIO,
                    f"{label} audio download: not audio ({shorten(header_type, 80)})",
                )
            total = _declared_length(response)
            if total > max_bytes:
                raise _too_large(label, max_bytes)
            last_beat = 0.0
            fh = await asyncio.to_thread(part.open, "wb")
            try:
                async for chunk in response.aiter_bytes(_CHUNK):
                    written += len(chunk)
                    if written > max_bytes:  # a body longer than it said, or endless
                        raise _too_large(label, max_bytes)
                    fh.write(chunk)  # local disk, small chunks: not worth a thread hop each
                    now = time.monotonic()
                    if now - last_beat >= _HEARTBEAT_EVERY_S:
                        last_beat = now
                        heartbeat(min(written / total, 1.0) if total else 0.0)
            finally:
                await asyncio.to_thread(fh.close)
        if written == 0:
            raise ProviderError(ErrorCode.BAD_AUDIO, f"{label} audio download: empty body")
        await asyncio.to_thread(part.replace, dest)
    except EgressRefused as exc:
        part.unlink(missing_ok=True)
        raise ProviderError(ErrorCode.BAD_AUDIO, f"{label} audio download: {exc}") from None
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        part.unlink(missing_ok=True)
        raise ProviderError(
            ErrorCode.TIMEOUT,
            redact(f"{label} audio download: {type(exc).__name__}: {shorten(exc)}"),
        ) from None
    except BaseException:  # ProviderError, cancellation: leave no partial file behind
        part.unlink(missing_ok=True)
        raise
    heartbeat(1.0)
    return DownloadedAudio(extension=ext, content_type=_CONTENT_TYPES[ext])


def _declared_length(response: httpx.Response) -> int:
    try:
        return max(0, int(response.headers.get("content-length") or 0))
    except ValueError:
        return 0


def _too_large(label: str, max_bytes: int) -> ProviderError:
    return ProviderError(
        ErrorCode.BAD_AUDIO,
        f"{label} audio download: larger than {max_bytes} bytes (PROVIDER_DOWNLOAD_MAX_BYTES)",
    )
