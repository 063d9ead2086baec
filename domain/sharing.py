"""Share links: one active, unguessable public link per track, revocable by its owner.

The slug is the only secret: anyone holding it may see the track's public page, cover and
audio, and nothing else. It is 24 random bytes (secrets.token_urlsafe), far past guessing.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import uuid

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts import JobStatus
from core.db import SessionFactory, transaction
from core.logging import get_logger
from core.models import ShareLink, Track, utcnow
from domain.context import Context
from domain.errors import Conflict, Unavailable
from domain.previews import preview_png
from domain.tracks.ownership import owned_track

log = get_logger("soundfoundry.sharing")

SLUG_BYTES = 24  # 32 URL-safe characters
# Anything else cannot be a slug we made: answer 404 without asking the database.
_SLUG = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_slug() -> str:
    return secrets.token_urlsafe(SLUG_BYTES)


async def share_track(sessions: SessionFactory, track_id: uuid.UUID) -> tuple[ShareLink, bool]:
    """The track's active link, made now if it has none; (link, created).

    The track row is locked first (Postgres), so concurrent requests queue and the second
    finds the first's link. Where that lock does not exist (SQLite) the earliest active
    link wins and a duplicate made in a race is dropped before commit.
    """
    async with transaction(sessions) as session:
        track = await session.get(Track, track_id, with_for_update=True)
        assert track is not None
        active = await _active_links(session, track_id)
        if active:
            return active[0], False
        link = ShareLink(track_id=track_id, user_id=track.user_id, slug=new_slug())
        session.add(link)
        await session.flush()
        active = await _active_links(session, track_id)
        if active[0].id != link.id:
            await session.delete(link)
            return active[0], False
        return link, True


async def revoke_track_links(sessions: SessionFactory, track_id: uuid.UUID) -> int:
    """Revoke every active link of the track; the number revoked."""
    async with transaction(sessions) as session:
        revoked = await session.exec(
            update(ShareLink)
            .where(col(ShareLink.track_id) == track_id, col(ShareLink.revoked_at).is_(None))
            .values(revoked_at=utcnow())
        )
        return int(revoked.rowcount or 0)  # type: ignore[attr-defined]


async def shared_track(sessions: SessionFactory, slug: str) -> tuple[ShareLink, Track] | None:
    """The link and its track for a public request; None when the slug is unknown or
    revoked, or the track has nothing to show (not COMPLETE)."""
    if not _SLUG.fullmatch(slug):
        return None
    async with sessions() as session:
        row = (
            await session.exec(
                select(ShareLink, Track)
                .join(Track, col(Track.id) == col(ShareLink.track_id))
                .where(
                    col(ShareLink.slug) == slug,
                    col(ShareLink.revoked_at).is_(None),
                    col(Track.status) == JobStatus.COMPLETE,
                    col(Track.audio_key).is_not(None),
                )
            )
        ).first()
    return (row[0], row[1]) if row is not None else None


async def _active_links(session: AsyncSession, track_id: uuid.UUID) -> list[ShareLink]:
    rows = await session.exec(
        select(ShareLink)
        .where(col(ShareLink.track_id) == track_id, col(ShareLink.revoked_at).is_(None))
        .order_by(col(ShareLink.created_at), col(ShareLink.slug))
    )
    return list(rows)


# Use cases: what the share routes call.


async def share(ctx: Context, user_id: uuid.UUID, track_id: uuid.UUID) -> tuple[ShareLink, bool]:
    """The track's public link, and whether it was made now (False: it had one)."""
    track, _ = await owned_track(ctx.sessions, track_id, user_id)
    if track.status != JobStatus.COMPLETE:
        raise Conflict(f"a track can be shared once it is COMPLETE (it is {track.status.value})")
    link, created = await share_track(ctx.sessions, track_id)
    # Sharing is when a link preview first becomes possible: draw it now, so the page's
    # first visitor (and its og:image fetcher) never waits for the render. With previews'
    # queue full, the first visitor draws it instead.
    with contextlib.suppress(Unavailable):
        await preview_png(ctx, track)
    if created:
        log.info("share link created", track_id=str(track_id))
    return link, created


async def unshare(ctx: Context, user_id: uuid.UUID, track_id: uuid.UUID) -> int:
    """Revoke the track's links; its page, cover and audio answer 404 from then on."""
    await owned_track(ctx.sessions, track_id, user_id)
    revoked = await revoke_track_links(ctx.sessions, track_id)
    if revoked:
        log.info("share link revoked", track_id=str(track_id))
    return revoked
