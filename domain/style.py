"""The style system: a per-user style seed, palette unlocks and series, and design tokens.

Each part has its own flag and all ship off (README: "Covers and style"):

    STYLE_SEED_ENABLED     covers are drawn from the user's style seed, not the track's
    STYLE_UNLOCKS_ENABLED  palettes unlocked by finished work (UNLOCK_RULES)
    STYLE_SERIES_ENABLED   tracks grouped in series; each user has a default series

Unlock rules (the one table; README repeats it):

    palette "ember"   at  1 COMPLETE track
    palette "tide"    at  5 COMPLETE tracks
    palette "aurora"  at 10 COMPLETE tracks

Unlocks are recomputed whenever the user creates a track and when they read
/api/style/me; recording one is idempotent (unique per user, kind and name), and an unlock
is never taken back.

The design tokens are public (GET /api/tokens). Their palettes are drawn by the cover
renderer itself (engines.cover_art.palette_for), so the web UI and the covers cannot drift apart.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.contracts import JobStatus
from core.db import SessionFactory, transaction
from core.models import Series, StyleUnlock, Track, User, utcnow
from engines.cover_art import _SANS as COVER_FONT_FAMILY  # the stack the cover titles are set in
from engines.cover_art import palette_for

# What each flag's endpoints answer while it is off.
SEED_OFF = "style seeds are turned off (STYLE_SEED_ENABLED=false)"
UNLOCKS_OFF = "style unlocks are turned off (STYLE_UNLOCKS_ENABLED=false)"
SERIES_OFF = "style series are turned off (STYLE_SERIES_ENABLED=false)"
ALL_OFF = (
    "the style system is turned off "
    "(STYLE_SEED_ENABLED, STYLE_UNLOCKS_ENABLED and STYLE_SERIES_ENABLED are false)"
)

DEFAULT_SERIES_TITLE = "Default"
DEFAULT_SERIES_PREFIX = "default-"
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,98}[a-z0-9])?$"


@dataclass(frozen=True)
class UnlockRule:
    kind: str
    name: str
    completed_tracks: int


UNLOCK_RULES: tuple[UnlockRule, ...] = (
    UnlockRule("palette", "ember", 1),
    UnlockRule("palette", "tide", 5),
    UnlockRule("palette", "aurora", 10),
)

# Named palettes and the phrase each is drawn from; the mood words in the phrase pick the
# hue family in palette_for. "foundry" is everyone's; the others are unlocked.
PALETTE_PHRASES: dict[str, str] = {
    "foundry": "night studio",
    "ember": "warm fire ember",
    "tide": "ocean tide",
    "aurora": "aurora forest",
}
PALETTE_ROLES = ("deep", "background", "primary", "secondary", "highlight")

# Type scale: a major third (1.25) on a 16 px base, rounded to whole pixels.
_TYPE_STEPS = {"xs": -2, "sm": -1, "md": 0, "lg": 1, "xl": 2, "2xl": 3, "3xl": 4}
SPACING_PX = {"0": 0, "1": 4, "2": 8, "3": 12, "4": 16, "5": 24, "6": 32, "7": 48, "8": 64}


class SeriesExists(Exception):
    pass


def new_style_seed() -> int:
    """A random non-negative 31-bit seed (fits the INTEGER column and the cover PRNG)."""
    return secrets.randbelow(2**31)


def default_series_slug(user_id: uuid.UUID) -> str:
    return f"{DEFAULT_SERIES_PREFIX}{user_id}"


def slugify(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:100].strip("-")
    return slug or "series"


def palettes() -> dict[str, dict[str, str]]:
    """Every named palette as {role: colour}, drawn by the cover renderer."""
    return {
        name: dict(zip(PALETTE_ROLES, palette_for(phrase, 0, 1), strict=True))
        for name, phrase in PALETTE_PHRASES.items()
    }


def tokens() -> dict[str, Any]:
    """The public design tokens shared by covers and the web UI."""
    return {
        "palettes": palettes(),
        "palette_roles": list(PALETTE_ROLES),
        "unlockable_palettes": {
            rule.name: rule.completed_tracks for rule in UNLOCK_RULES if rule.kind == "palette"
        },
        "type": {
            "font_family": COVER_FONT_FAMILY,
            "base_px": 16,
            "ratio": 1.25,
            "scale_px": {name: round(16 * 1.25**step) for name, step in _TYPE_STEPS.items()},
        },
        "spacing_px": SPACING_PX,
        "radius_px": {"sm": 8, "md": 14, "round": 999},
    }


# --------------------------------------------------------------------------- database


async def _insert_ignoring_duplicates(
    session: AsyncSession, model: Any, rows: list[dict[str, Any]]
) -> int:
    """INSERT … ON CONFLICT DO NOTHING on Postgres and SQLite; returns rows inserted.

    Two requests racing to create the same default series or unlock both succeed, and the
    row exists once.
    """
    if not rows:
        return 0
    bind = session.get_bind()
    insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
    result = await session.exec(insert(model).values(rows).on_conflict_do_nothing())
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def ensure_default_series(session: AsyncSession, user_id: uuid.UUID) -> bool:
    """Create the user's default series if missing; True if it was created now."""
    row = {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "slug": default_series_slug(user_id),
        "title": DEFAULT_SERIES_TITLE,
        "created_at": utcnow(),  # a Core insert skips the model's default factories
    }
    return await _insert_ignoring_duplicates(session, Series, [row]) == 1


async def default_series_id(sessions: SessionFactory, user_id: uuid.UUID) -> uuid.UUID:
    async with transaction(sessions) as session:
        await ensure_default_series(session, user_id)
        series_id = (
            await session.exec(
                select(Series.id).where(
                    col(Series.user_id) == user_id,
                    col(Series.slug) == default_series_slug(user_id),
                )
            )
        ).one()
    return series_id


async def user_series(sessions: SessionFactory, user_id: uuid.UUID) -> list[Series]:
    """The user's series, the default one first (created on demand)."""
    async with transaction(sessions) as session:
        await ensure_default_series(session, user_id)
        rows = await session.exec(
            select(Series)
            .where(col(Series.user_id) == user_id)
            .order_by(col(Series.created_at), col(Series.slug))
        )
        series = list(rows)
    default = default_series_slug(user_id)
    return sorted(series, key=lambda s: s.slug != default)


async def owned_series(
    sessions: SessionFactory, user_id: uuid.UUID, series_id: uuid.UUID
) -> Series | None:
    async with sessions() as session:
        series = await session.get(Series, series_id)
    return series if series is not None and series.user_id == user_id else None


async def create_series(
    sessions: SessionFactory, user_id: uuid.UUID, title: str, slug: str | None
) -> Series:
    """A new series; an explicit slug that is taken raises SeriesExists, a derived one
    gets a numeric suffix."""
    explicit = slug is not None
    base = slug if slug is not None else slugify(title)
    if not explicit and base.startswith(DEFAULT_SERIES_PREFIX):
        base = f"my-{base}"[:100]  # "default-…" is reserved for the default series
    for n in range(1, 50):
        candidate = base if n == 1 else f"{base[: 100 - len(str(n)) - 1]}-{n}"
        series = Series(user_id=user_id, slug=candidate, title=title)
        try:
            async with transaction(sessions) as session:
                session.add(series)
        except IntegrityError as exc:
            if explicit:
                raise SeriesExists(f"a series with slug {candidate!r} already exists") from exc
            continue
        return series
    raise SeriesExists(f"too many series with slugs like {base!r}")


async def completed_tracks(session: AsyncSession, user_id: uuid.UUID) -> int:
    count = await session.exec(
        select(func.count())
        .select_from(Track)
        .where(col(Track.user_id) == user_id, col(Track.status) == JobStatus.COMPLETE)
    )
    return int(count.one())


async def sync_unlocks(sessions: SessionFactory, user_id: uuid.UUID) -> list[StyleUnlock]:
    """Record every unlock the user's COMPLETE tracks have earned; return all of theirs."""
    async with transaction(sessions) as session:
        done = await completed_tracks(session, user_id)
        earned = [
            {"user_id": user_id, "kind": rule.kind, "name": rule.name, "unlocked_at": utcnow()}
            for rule in UNLOCK_RULES
            if done >= rule.completed_tracks
        ]
        await _insert_ignoring_duplicates(session, StyleUnlock, earned)
        rows = await session.exec(
            select(StyleUnlock)
            .where(col(StyleUnlock.user_id) == user_id)
            .order_by(col(StyleUnlock.unlocked_at), col(StyleUnlock.id))
        )
        return list(rows)


async def ensure_style_seed(sessions: SessionFactory, user_id: uuid.UUID) -> int:
    """The user's style seed, given on first use to users made before the flag was on."""
    async with transaction(sessions) as session:
        await session.exec(
            update(User)
            .where(col(User.id) == user_id, col(User.user_style_seed).is_(None))
            .values(user_style_seed=new_style_seed())
        )
        seed = (
            await session.exec(select(User.user_style_seed).where(col(User.id) == user_id))
        ).one()
    assert seed is not None
    return seed


@dataclass
class BackfillReport:
    seeded: int = 0
    had_seed: int = 0
    series_created: int = 0
    series_existed: int = 0


async def backfill(sessions: SessionFactory, *, series: bool) -> BackfillReport:
    """Give every user without one a style seed (and a default series when `series`).

    Safe to run again and while the API is serving: each user is changed only while the
    seed is still missing, and the default series insert ignores one that exists.
    """
    report = BackfillReport()
    async with sessions() as session:
        user_ids = list(await session.exec(select(User.id).order_by(col(User.created_at))))
    for user_id in user_ids:
        async with transaction(sessions) as session:
            changed = await session.exec(
                update(User)
                .where(col(User.id) == user_id, col(User.user_style_seed).is_(None))
                .values(user_style_seed=new_style_seed())
            )
            if changed.rowcount:  # type: ignore[attr-defined]
                report.seeded += 1
            else:
                report.had_seed += 1
            if series:
                if await ensure_default_series(session, user_id):
                    report.series_created += 1
                else:
                    report.series_existed += 1
    return report
