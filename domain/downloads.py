"""WAV downloads streamed from the FLAC master, with bounded concurrency.

WAV is never stored: each download decodes the master as the client reads. The master is
read from storage a block at a time (core.storage_reader) and decoded a block at a time
(engines.mastering.wav_chunks), so a download holds about two blocks of memory and no
file, however long the track and however slowly the client reads.

Each download holds a slot until its body is finished or abandoned: at most
`wav_max_per_link` per signed link and `wav_max_per_user` per track owner (beyond, 429),
and `wav_max_concurrent` per process (beyond, 503); both with Retry-After.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.settings import Settings
from core.storage_reader import StorageReader
from domain.context import Context
from domain.errors import Busy, Unavailable
from domain.loop_local import loop_local
from engines.mastering import wav_chunks, wav_size

# Decoding runs on threads of its own (it waits on storage for every block, and must not
# hold threads other work waits for), and few of them: however many downloads stream,
# at most this many blocks decode at once, so downloads cannot take the API's CPU (and
# the GIL) from everyone else. Decoding runs far faster than real time, so a download
# waiting its turn for a block still streams faster than any player needs.
DECODE_THREADS = 2
_decode_threads = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="wav-decode")


@dataclass(frozen=True)
class StreamBounds:
    max_total: int
    max_per_user: int
    max_per_link: int
    retry_after_s: int


class StreamSlots:
    """Counts of running downloads, per link, per user and in all (one event loop's)."""

    def __init__(self, bounds: StreamBounds) -> None:
        self.bounds = bounds
        self.total = 0
        self._held: Counter[Hashable] = Counter()

    def take(self, user: uuid.UUID, link: str) -> Callable[[], None]:
        """Hold a slot; the returned function gives it back (once). Raises Busy past the
        link's or user's bound, Unavailable past the process's."""
        bounds = self.bounds
        keys = (("link", link), ("user", user))
        if self._held[keys[0]] >= bounds.max_per_link:
            raise Busy(
                f"this link is already downloading {bounds.max_per_link} time(s); "
                "try again when that finishes",
                bounds.retry_after_s,
            )
        if self._held[keys[1]] >= bounds.max_per_user:
            raise Busy(
                f"{bounds.max_per_user} WAV downloads of this account's tracks are running; "
                "try again when one finishes",
                bounds.retry_after_s,
            )
        if self.total >= bounds.max_total:
            raise Unavailable(
                f"the server is streaming {bounds.max_total} WAV downloads already; "
                "try again shortly",
                bounds.retry_after_s,
            )
        self.total += 1
        self._held.update(keys)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.total -= 1
                self._held.subtract(keys)
                self._held += Counter()  # drop the zeros: the counter stays small

        return release


def stream_slots(settings: Settings) -> StreamSlots:
    bounds = StreamBounds(
        max_total=settings.wav_max_concurrent,
        max_per_user=settings.wav_max_per_user,
        max_per_link=settings.wav_max_per_link,
        retry_after_s=settings.wav_retry_after_s,
    )
    return loop_local(bounds, lambda: StreamSlots(bounds))


@dataclass
class WavStream:
    size: int  # bytes, for Content-Length
    chunks: AsyncIterator[bytes]  # holds the download's slot until finished or closed


async def stream_wav(ctx: Context, owner: uuid.UUID, link: str, master_key: str) -> WavStream:
    """The WAV of the FLAC at `master_key`, ready to stream. Raises ObjectNotFound when
    the master is missing, Busy / Unavailable past the bounds (nothing held then)."""
    release = stream_slots(ctx.settings).take(owner, link)
    loop = asyncio.get_running_loop()
    try:
        reader = StorageReader(ctx.storage, master_key, await ctx.storage.size(master_key), loop)
        size = await loop.run_in_executor(_decode_threads, wav_size, reader)
    except BaseException:
        release()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            pieces = wav_chunks(reader)
            while True:
                piece = await loop.run_in_executor(_decode_threads, next, pieces, None)
                if piece is None:
                    return
                yield piece
        finally:
            release()

    body = chunks()
    # Also when the body is dropped before it started (a HEAD, an error on the way out):
    # a generator that never ran never reaches its finally.
    weakref.finalize(body, release)
    return WavStream(size, body)
