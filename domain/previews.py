"""Link previews drawn once per cover, with a bounded number of requests waiting.

A fresh share's PNG preview is drawn on the first request for it, and the requests are
anonymous (link-preview crawlers, often many at the same instant). So:

* single flight: one drawing per preview (track, cover, visual version) at a time;
  every request for it meanwhile shares that drawing's outcome;
* a bounded queue: at most `preview_max_renders` previews are drawn at once (fewer than
  the sandbox's slots, so previews never take them all from users' cover saves) and at
  most `preview_max_waiting` requests wait for previews. Past either bound the request
  is refused at once with `Unavailable` (503 with Retry-After), never queued.

The drawing runs as a task of its own: a crawler that hangs up does not cancel it for
the others, and it stays bounded by the render sandbox's limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from core.logging import get_logger
from core.models import Track
from core.settings import Settings
from domain.context import Context
from domain.covers import CoverRenderError, ensure_preview_png
from domain.errors import Unavailable
from domain.loop_local import loop_local
from engines.render_sandbox import sandbox_for

log = get_logger("soundfoundry.previews")

_T = TypeVar("_T")


@dataclass(frozen=True)
class FlightBounds:
    max_running: int
    max_waiting: int
    retry_after_s: int


class SingleFlight:
    """Runs at most one piece of work per key at a time, shared by everyone asking for it.

    Used from one event loop: its counters change only on that loop's thread.
    """

    def __init__(self, bounds: FlightBounds) -> None:
        self.bounds = bounds
        self.waiting = 0
        self._flights: dict[Hashable, asyncio.Task[Any]] = {}

    @property
    def running(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[_T]]) -> _T:
        """`work()`'s outcome, shared with every caller asking for `key` meanwhile.

        Raises Unavailable when `max_waiting` callers already wait, or when `key` is not
        running and `max_running` others are.
        """
        bounds = self.bounds
        flight = self._flights.get(key)
        if self.waiting >= bounds.max_waiting:
            raise Unavailable(
                f"{bounds.max_waiting} requests are waiting for previews already; "
                "try again shortly",
                bounds.retry_after_s,
            )
        if flight is None:
            if self.running >= bounds.max_running:
                raise Unavailable(
                    f"{bounds.max_running} previews are being drawn already; try again shortly",
                    bounds.retry_after_s,
                )
            flight = asyncio.create_task(self._fly(key, work))
            # Read its outcome even when every caller has gone: no "never retrieved" noise.
            flight.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._flights[key] = flight
        self.waiting += 1
        try:
            # shield: a caller that goes away leaves the work to the others.
            return cast(_T, await asyncio.shield(flight))
        finally:
            self.waiting -= 1

    async def _fly(self, key: Hashable, work: Callable[[], Awaitable[_T]]) -> _T:
        try:
            return await work()
        finally:
            del self._flights[key]


def preview_flights(settings: Settings) -> SingleFlight:
    bounds = FlightBounds(
        max_running=settings.preview_max_renders,
        max_waiting=settings.preview_max_waiting,
        # About how long a preview takes to draw at worst, split in a few tries.
        retry_after_s=max(1, round(settings.cover_render_timeout_s / 4)),
    )
    return loop_local(bounds, lambda: SingleFlight(bounds))


async def preview_png(ctx: Context, track: Track) -> str | None:
    """The storage key of the track's PNG preview, drawn now if it has none; None when it
    has no cover or the cover cannot be drawn. Raises Unavailable when the queue is full.
    """
    if track.cover_png_key or not track.cover_key:
        return track.cover_png_key

    async def draw() -> str | None:
        # The row again: a request that read it before the last drawing was recorded
        # must not draw it a second time.
        async with ctx.sessions() as session:
            fresh = await session.get(Track, track.id)
        if fresh is None or fresh.cover_key != track.cover_key or fresh.cover_png_key:
            return fresh.cover_png_key if fresh is not None else None
        try:
            return await ensure_preview_png(
                ctx.sessions, ctx.storage, fresh, sandbox=sandbox_for(ctx.settings)
            )
        except CoverRenderError as exc:
            log.warning("preview not drawn", track_id=str(track.id), error=str(exc))
            return None

    key = (track.id, track.cover_key, track.visual_version)
    return await preview_flights(ctx.settings).run(key, draw)
