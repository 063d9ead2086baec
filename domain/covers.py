"""Storing covers: the generated art and the user's own, each as SVG plus a PNG.

Both kinds live at the same keys, `covers/<user>/<track>.svg` and `.png`, so a track has
exactly one cover at a time and the rest of the product (signed links, the share page)
never needs to know which kind it is. The PNG exists for link previews (og:image): the
crawlers of chat apps and social networks do not render SVG.

PNGs are rendered with resvg (the `resvg-py` wheel: Rust, no system library), each in its
own child process with CPU, memory and time limits (engines/render_sandbox.py). Everything
is checked and rendered before the first write, so a rejected cover stores nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import col

from core.contracts import JobStatus
from core.db import SessionFactory, transaction
from core.logging import get_logger
from core.models import Job, Track, User, utcnow
from core.storage import Storage, cover_key
from domain.context import Context
from domain.errors import Busy, Conflict, Forbidden, Invalid, Rejected, TooLarge
from domain.tracks.ownership import owned_track
from engines.cover_art import render_cover_svg
from engines.render_sandbox import (
    RenderBusy,
    RenderFailed,
    RenderSandbox,
    RenderTooCostly,
    sandbox_for,
)
from engines.svg_sanitize import SvgRejected, SvgTooComplex, SvgTooLarge

log = get_logger("soundfoundry.covers")

PNG_SIZE = 800  # px, square; large enough for summary_large_image cards, small to fetch
# What shows through transparent parts of a user's cover: the UI's dark or light page.
BACKDROP = {True: "#121119", False: "#ffffff"}

SANS_FALLBACK = "DejaVu Sans"

GENERATED = "generated"
USER = "user"


# The SVG passed the sanitizer but could not be drawn as a PNG (RenderTooCostly, a
# subclass, when its render was stopped at a limit).
CoverRenderError = RenderFailed


def cover_svg_key(user_id: object, track_id: object) -> str:
    return cover_key(user_id, track_id)


def cover_png_key(user_id: object, track_id: object) -> str:
    return f"covers/{user_id}/{track_id}.png"


def cover_seed(track_seed: int, user_style_seed: int | None, style_seed_enabled: bool) -> int:
    """The seed the art is drawn from: the user's style seed when that feature is on and
    the user has one, so all their covers share a look; otherwise the track's own."""
    if style_seed_enabled and user_style_seed is not None:
        return user_style_seed
    return track_seed


async def render_png(
    svg: str, *, dark: bool = True, sandbox: RenderSandbox | None = None, owner: object = None
) -> bytes:
    """A square PNG (PNG_SIZE px) of the SVG over the dark or light backdrop.

    Drawn in `sandbox` (the default limits without one) in a slot of `owner`'s: a user's
    render over their or the process's bound raises RenderBusy; without an owner (trusted
    art) it waits for a slot. Raises CoverRenderError (RenderFailed) when it cannot be
    drawn, RenderTooCostly when stopped at a limit.
    """
    sandbox = sandbox or sandbox_for()
    async with sandbox.slot(owner):
        return await _draw(sandbox, svg, dark)


def _draw_options(dark: bool) -> dict[str, object]:
    return {
        "background": BACKDROP[dark],
        # resvg's default of 0 makes absolute units (mm, in) collapse to nothing.
        "dpi": 96,
        # fontdb maps sans-serif to Arial, absent on Linux; DejaVu is (Dockerfile).
        "sans_serif_family": SANS_FALLBACK,
    }


async def _draw(sandbox: RenderSandbox, svg: str, dark: bool) -> bytes:
    return await sandbox.render(svg, size_px=PNG_SIZE, **_draw_options(dark))


async def _put_both(
    storage: Storage, user_id: object, track_id: object, svg: str, png: bytes
) -> tuple[str, str]:
    svg_key, png_key = cover_svg_key(user_id, track_id), cover_png_key(user_id, track_id)
    # PNG first: a reader that finds the SVG (the key the track row points at) finds a
    # preview beside it.
    await storage.put_bytes(png_key, png, "image/png")
    await storage.put_bytes(svg_key, svg.encode(), "image/svg+xml")
    return svg_key, png_key


async def store_generated_cover(
    storage: Storage,
    user_id: uuid.UUID,
    track_id: uuid.UUID,
    prompt: str,
    seed: int,
    visual_version: int,
    *,
    sandbox: RenderSandbox | None = None,
) -> tuple[str, str]:
    """Draw the generated cover and store it; returns (svg_key, png_key)."""
    svg = render_cover_svg(prompt, seed, visual_version)
    png = await render_png(svg, sandbox=sandbox)
    return await _put_both(storage, user_id, track_id, svg, png)


async def store_generated_svg(
    storage: Storage,
    user_id: uuid.UUID,
    track_id: uuid.UUID,
    prompt: str,
    seed: int,
    visual_version: int,
) -> str:
    """Draw the generated cover's SVG (milliseconds) and store it; returns its key."""
    svg_key = cover_svg_key(user_id, track_id)
    svg = render_cover_svg(prompt, seed, visual_version)
    await storage.put_bytes(svg_key, svg.encode(), "image/svg+xml")
    return svg_key


async def ensure_preview_png(
    sessions: SessionFactory,
    storage: Storage,
    track: Track,
    *,
    sandbox: RenderSandbox | None = None,
) -> str | None:
    """The key of the track's PNG preview, drawn from its stored SVG on first use.

    Only link previews show the PNG, so the pipeline never waits for it: the first
    request renders it (in the sandbox, waiting for a slot) and records it. A re-roll
    that lands meanwhile wins: the key is recorded only for the cover it was drawn from.
    """
    if track.cover_png_key:
        return track.cover_png_key
    if not track.cover_key:
        return None
    svg = (await storage.get_bytes(track.cover_key)).decode()
    png = await render_png(svg, dark=track.cover_dark is not False, sandbox=sandbox)
    png_key = cover_png_key(track.user_id, track.id)
    await storage.put_bytes(png_key, png, "image/png")
    async with transaction(sessions) as session:
        await session.exec(
            update(Track)
            .where(
                col(Track.id) == track.id,
                col(Track.visual_version) == track.visual_version,
                col(Track.cover_key) == track.cover_key,
                col(Track.cover_png_key).is_(None),
            )
            .values(cover_png_key=png_key)
        )
    return png_key


async def store_user_cover(
    storage: Storage,
    user_id: uuid.UUID,
    track_id: uuid.UUID,
    svg: str,
    dark: bool,
    *,
    sandbox: RenderSandbox | None = None,
) -> tuple[str, str]:
    """Sanitize, draw and store a user's own cover; returns (svg_key, png_key).

    Raises SvgTooLarge, SvgRejected (SvgTooComplex for reference fan-out), RenderBusy or
    CoverRenderError before anything is written. What is stored is the sanitizer's
    re-serialization, exactly what was checked. Parsing, sanitizing and drawing all run
    in the sandbox's child under its limits, in a slot of the user's, so sanitizing
    counts against the user's render bound too and never runs in this process.
    """
    sandbox = sandbox or sandbox_for()
    async with sandbox.slot(user_id):
        clean, png = await sandbox.sanitize_and_render(svg, size_px=PNG_SIZE, **_draw_options(dark))
    return await _put_both(storage, user_id, track_id, clean, png)


async def record_cover(
    sessions: SessionFactory,
    track_id: uuid.UUID,
    svg_key: str,
    png_key: str,
    *,
    source: str,
    dark: bool | None = None,
) -> None:
    async with transaction(sessions) as session:
        await session.exec(
            update(Track)
            .where(col(Track.id) == track_id)
            .values(
                cover_key=svg_key,
                cover_png_key=png_key,
                cover_source=source,
                cover_dark=dark,
                updated_at=utcnow(),
            )
        )


@dataclass
class DrawnCover:
    svg_key: str
    png_key: str | None  # None until a link preview first asks for it
    skipped: bool  # the track carries the user's own cover, left as it is


async def draw_track_cover(
    sessions: SessionFactory,
    storage: Storage,
    track_id: uuid.UUID,
    *,
    style_seed_enabled: bool,
    sandbox: RenderSandbox | None = None,
) -> DrawnCover | None:
    """The worker's cover step: draw the generated cover from the track row and its user.

    None when the track row is gone. A user's own cover is never drawn over (only the
    owner's explicit re-roll replaces it). Safe to repeat: the same row draws the same
    bytes to the same keys.
    """
    async with sessions() as session:
        track = await session.get(Track, track_id)
        user = await session.get(User, track.user_id) if track is not None else None
    if track is None or user is None:
        return None
    if track.cover_source == USER and track.cover_key and track.cover_png_key:
        return DrawnCover(track.cover_key, track.cover_png_key, skipped=True)
    seed = cover_seed(track.seed, user.user_style_seed, style_seed_enabled)
    svg_key = await store_generated_svg(
        storage, track.user_id, track.id, track.prompt, seed, track.visual_version
    )
    # The SVG key becomes the track's cover when the job completes (mark_complete), so
    # an unfinished track shows no cover. The PNG preview is drawn on first use
    # (ensure_preview_png), off the pipeline's critical path.
    async with transaction(sessions) as session:
        await session.exec(
            update(Track)
            .where(col(Track.id) == track_id)
            .values(cover_png_key=None, cover_source=GENERATED, cover_dark=None)
        )
    return DrawnCover(svg_key, None, skipped=False)


class TrackNotReady(Conflict):
    """The track has no finished cover yet (it is not COMPLETE)."""


class RerollConflict(Conflict):
    """Another re-roll of the same track changed its visual_version first."""


async def redraw_generated_cover(
    sessions: SessionFactory,
    storage: Storage,
    track_id: uuid.UUID,
    *,
    style_seed_enabled: bool,
    sandbox: RenderSandbox | None = None,
) -> Track:
    """Bump the track's visual_version and draw the generated cover for the new version.

    The art is drawn first, holding no transaction (a render takes a while and used to
    hold the row, or all of SQLite, for that long). Then one short transaction moves
    visual_version from the version read to the next with a compare-and-set, and writes
    the files while it holds the row: of two concurrent re-rolls one wins, the other gets
    RerollConflict, and files are written in the order the versions are. A failed write
    rolls the bump back. This also replaces a user's own cover: a re-roll asks for
    generated art. The render takes a slot of the track owner's (RenderBusy beyond it).
    """
    async with sessions() as session:
        track = await session.get(Track, track_id)
        user = await session.get(User, track.user_id) if track is not None else None
    if track is None or user is None or track.status != JobStatus.COMPLETE:
        raise TrackNotReady(str(track_id))
    drawn_from = track.visual_version
    version = drawn_from + 1
    seed = cover_seed(track.seed, user.user_style_seed, style_seed_enabled)
    svg = render_cover_svg(track.prompt, seed, version)
    png = await render_png(svg, sandbox=sandbox, owner=track.user_id)
    svg_key = cover_svg_key(track.user_id, track_id)
    png_key = cover_png_key(track.user_id, track_id)
    async with transaction(sessions) as session:
        bumped = await session.exec(
            update(Track)
            .where(
                col(Track.id) == track_id,
                col(Track.status) == JobStatus.COMPLETE,
                col(Track.visual_version) == drawn_from,
            )
            .values(
                visual_version=version,
                cover_key=svg_key,
                cover_png_key=png_key,
                cover_source=GENERATED,
                cover_dark=None,
                updated_at=utcnow(),
            )
        )
        if bumped.rowcount != 1:  # type: ignore[attr-defined]
            current = await session.get(Track, track_id)
            if current is None or current.status != JobStatus.COMPLETE:
                raise TrackNotReady(str(track_id))
            raise RerollConflict(str(track_id))
        await _put_both(storage, track.user_id, track_id, svg, png)
    async with sessions() as session:
        fresh = await session.get(Track, track_id)
    if fresh is None:
        raise TrackNotReady(str(track_id))
    return fresh


# Use cases: what the cover routes (and anyone else) call.

COVER_SAVE_OFF = "cover saving is turned off (FEATURE_COVER_SAVE=false)"
REROLL_CONFLICT = "another re-roll of this track finished first; reload the track to see it"


def _not_complete(track: Track, action: str) -> TrackNotReady:
    return TrackNotReady(f"{action} once the track is COMPLETE (it is {track.status.value})")


def _busy(exc: RenderBusy) -> Busy:
    return Busy(str(exc), exc.retry_after_s)


async def reroll_cover(ctx: Context, user_id: uuid.UUID, track_id: uuid.UUID) -> tuple[Track, Job]:
    """Re-roll the generated cover: visual_version + 1, then draw SVG and PNG anew.

    A track carrying the user's own cover gets generated art again (a re-roll asks for
    it). Of concurrent re-rolls of one track one wins; the others get RerollConflict.
    """
    track, job = await owned_track(ctx.sessions, track_id, user_id)
    action = "the cover can be regenerated"
    if track.status != JobStatus.COMPLETE:
        raise _not_complete(track, action)
    try:
        track = await redraw_generated_cover(
            ctx.sessions,
            ctx.storage,
            track_id,
            style_seed_enabled=ctx.settings.style_seed_enabled,
            sandbox=sandbox_for(ctx.settings),
        )
    except RerollConflict as exc:
        raise RerollConflict(REROLL_CONFLICT) from exc
    except TrackNotReady as exc:
        raise _not_complete(track, action) from exc
    except RenderBusy as exc:
        raise _busy(exc) from exc
    except CoverRenderError as exc:
        raise Invalid(f"cover not regenerated: {exc}") from exc
    log.info("cover regenerated", track_id=str(track_id), visual_version=track.visual_version)
    return track, job


async def save_cover(
    ctx: Context, user_id: uuid.UUID, track_id: uuid.UUID, svg: str, dark: bool
) -> str:
    """Save the user's own SVG as the track's cover; its SVG key. A refused cover stores
    nothing: TooLarge, Busy, Invalid (too costly to draw) or Rejected (not allowed)."""
    if not ctx.settings.feature_cover_save:
        raise Forbidden(COVER_SAVE_OFF)
    track, _ = await owned_track(ctx.sessions, track_id, user_id)
    if track.status != JobStatus.COMPLETE:
        raise _not_complete(track, "a cover can be saved")
    try:
        svg_key, png_key = await store_user_cover(
            ctx.storage, user_id, track_id, svg, dark, sandbox=sandbox_for(ctx.settings)
        )
    except SvgTooLarge as exc:
        raise TooLarge(str(exc)) from exc
    except RenderBusy as exc:
        raise _busy(exc) from exc
    except (SvgTooComplex, RenderTooCostly) as exc:
        # Well-formed and allowed, but too expensive to draw: refused as content.
        raise Invalid(f"cover rejected: {exc}") from exc
    except (SvgRejected, CoverRenderError) as exc:
        raise Rejected(f"cover rejected: {exc}") from exc
    await record_cover(ctx.sessions, track_id, svg_key, png_key, source=USER, dark=dark)
    log.info("user cover saved", track_id=str(track_id))
    return svg_key
