"""`soundfoundry temporal setup`: make the configured namespace ready for SoundFoundry, once,
with an operator's rights (idempotent: a second run changes nothing and says so).

It registers the search attributes track workflows carry, waits until Temporal accepts
them, and reports the namespace's retention against the minimum SoundFoundry needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import typer
from rich.console import Console

from core.settings import get_settings
from core.temporal import (
    SEARCH_ATTRIBUTE_NAMES,
    SearchAttributesMissing,
    client_for,
    make_namespace_ready,
    temporal_connection,
)
from core.temporal_errors import TemporalUnavailable

T = TypeVar("T")

temporal_app = typer.Typer(help="Prepare the Temporal namespace.", no_args_is_help=True)

# Closed workflows must outlive this: the reconciler learns from them how a job ended that
# an operator terminated or that timed out (workers down over a long weekend must still
# find them when they return), and `soundfoundry replay --query` replays recent closed
# runs before a deploy. Three days is also what `temporal operator namespace create` gives.
MIN_RETENTION = timedelta(days=3)


@dataclass
class SetupReport:
    target: str
    retention: timedelta | None
    added: list[str] = field(default_factory=list)
    listed: bool = True
    usable_after_s: float = 0.0


async def setup_namespace() -> SetupReport:
    settings = get_settings()
    ready = await make_namespace_ready(await client_for(settings), settings)
    config = ready.namespace.config
    retention = (
        config.workflow_execution_retention_ttl.ToTimedelta()
        if config.HasField("workflow_execution_retention_ttl")
        else None
    )
    return SetupReport(
        temporal_connection(settings).describe(),
        retention,
        ready.attributes.added,
        ready.attributes.listed,
        ready.waited_s,
    )


def _show(report: SetupReport, out: Console) -> int:
    out.print(f"[bold]Temporal[/] {report.target}", highlight=False)
    if report.added:
        out.print(f"  [green]added[/]     search attributes {', '.join(report.added)} (Keyword)")
    kept = [name for name in SEARCH_ATTRIBUTE_NAMES if name not in report.added]
    if kept:
        how = "already registered" if report.listed else "present (checked by a probe start)"
        out.print(f"  [dim]unchanged[/] search attributes {', '.join(kept)}: {how}")
    waited = f" after {report.usable_after_s:.1f} s" if report.usable_after_s >= 1 else ""
    out.print(f"  [green]ok[/]        Temporal accepts them on new workflows{waited}")
    if report.retention is None:
        out.print("  [yellow]unknown[/]   retention: the namespace did not say")
        return 0
    days = report.retention / timedelta(days=1)
    if report.retention < MIN_RETENTION:
        out.print(
            f"  [yellow]warning[/]   retention {days:g} days is shorter than the"
            f" {MIN_RETENTION.days} days SoundFoundry needs: closed workflows may vanish before"
            " the reconciler or `soundfoundry replay --query` reads them; raise it with"
            " `temporal operator namespace update --namespace <ns> --retention 72h`",
            highlight=False,
        )
    else:
        out.print(f"  [green]ok[/]        retention {days:g} days (at least {MIN_RETENTION.days})")
    out.print("nothing to change" if not report.added else f"changed: {len(report.added)} added")
    return 0


def run_with_temporal(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(main) for a command that talks to Temporal: a failure to reach or use it
    ends the command with its one sentence (exit 1), not a traceback."""
    try:
        return asyncio.run(main)
    except (TemporalUnavailable, SearchAttributesMissing) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None


@temporal_app.command("setup")
def setup() -> None:
    """Register the search attributes, wait until Temporal accepts them, check retention."""
    report = run_with_temporal(setup_namespace())
    raise typer.Exit(_show(report, Console(soft_wrap=True)))
