"""`soundfoundry backfill …`: one-off data fills that are safe to run again."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from core.settings import get_settings

backfill_app = typer.Typer(
    help="Fill in data for existing users (idempotent).", no_args_is_help=True
)
out = Console(highlight=False)


@backfill_app.command("style-seed")
def style_seed() -> None:
    """Give users without one a style seed (and a default series if series are on)."""
    from core.db import create_engine, session_factory
    from domain.style import BackfillReport, backfill

    settings = get_settings()

    async def run() -> BackfillReport:
        engine = create_engine(settings.database_url)
        try:
            return await backfill(session_factory(engine), series=settings.style_series_enabled)
        finally:
            await engine.dispose()

    report = asyncio.run(run())
    users = "user" if report.seeded == 1 else "users"
    out.print(f"{report.seeded} {users} given a style seed, {report.had_seed} already had one")
    if settings.style_series_enabled:
        out.print(
            f"{report.series_created} default series created, "
            f"{report.series_existed} already existed"
        )
    else:
        out.print("default series skipped (STYLE_SERIES_ENABLED=false)")
    if not settings.style_seed_enabled:
        # Seeding ahead of the switch is fine; say why covers do not change yet.
        out.print("note: STYLE_SEED_ENABLED=false, covers use track seeds until it is on")
