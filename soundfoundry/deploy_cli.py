"""`soundfoundry deploy …`: the worker deployment's versions and the rollout switch.

A rollout (docs/operations-rollout.md): start the new version's workers, `deploy status`
shows both versions, `deploy set-current NEW` (or `--ramp PCT` first), the old version's
pinned runs finish on its workers until it shows 0 open, then those workers stop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from temporalio.client import Client
from temporalio.common import WorkerDeploymentVersion
from temporalio.service import RPCError

from core.deployment import build_id
from core.settings import Settings, get_settings
from core.temporal import client_for
from core.worker_deployment import (
    DeploymentState,
    describe,
    set_current,
    set_ramping,
    with_running_counts,
)

deploy_app = typer.Typer(
    help="Worker Versioning: versions, which is current, rollouts.", no_args_is_help=True
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
T = TypeVar("T")


def _run(action: Callable[[Client, Settings], Awaitable[T]]) -> T:
    """Run `action` with a client; a refusal by the server is one line and exit 1."""
    settings = get_settings()

    async def run() -> T:
        return await action(await client_for(settings), settings)

    try:
        return asyncio.run(run())
    except RPCError as exc:
        err.print(f"[red]the server refused: {exc.message}[/]")
        _exit(1)


def _exit(code: int = 0) -> NoReturn:
    """End the process without the interpreter's teardown: the Temporal client's Rust
    threads can outlive it and abort a short-lived process at exit (temporalio/sdk-python
    issue 300), which would turn a command that did its work into exit code -6."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _table(state: DeploymentState, mine: str) -> Table:
    table = Table("build id", "status", "pinned runs open", "created", box=None)
    for version in state.versions:
        status = version.status
        if version.build_id == state.ramping:
            status = f"{status} ({state.ramp_percentage:g}%)"
        created = f"{version.created:%Y-%m-%d %H:%M:%S}" if version.created else ""
        here = "  (this checkout)" if version.build_id == mine else ""
        table.add_row(f"{version.build_id}{here}", status, str(version.running), created)
    return table


@deploy_app.command("status")
def status() -> None:
    """The deployment's versions: which is current or ramping, and how many pinned runs
    each still has open (a version whose workers may stop shows 0)."""

    async def action(client: Client, settings: Settings) -> DeploymentState | None:
        state = await describe(client, settings.worker_deployment_name)
        return None if state is None else await with_running_counts(client, state)

    settings = get_settings()
    state = _run(action)
    name, namespace = settings.worker_deployment_name, settings.temporal_namespace
    if state is None:
        err.print(f"no worker of deployment '{name}' has polled namespace '{namespace}' yet")
        _exit(1)
    out.print(f"worker deployment '{name}' on namespace '{namespace}'")
    out.print(f"current: {state.current or 'none (unversioned workers)'}")
    if state.ramping:
        out.print(f"ramping: {state.ramping} at {state.ramp_percentage:g}%")
    out.print(_table(state, build_id(settings)))
    _exit()


@deploy_app.command("set-current")
def set_current_version(
    new_build_id: Annotated[str, typer.Argument(metavar="BUILD_ID", help="the new version")],
    ramp: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=100,
            help="send only this percentage of new tracks to BUILD_ID (the rest stay on"
            " the current version); run again without --ramp to make it current",
        ),
    ] = None,
) -> None:
    """Start new tracks on BUILD_ID; tracks in flight finish on the version that started
    them. Its workers must be polling first (the server refuses otherwise)."""

    async def action(client: Client, settings: Settings) -> None:
        version = WorkerDeploymentVersion(settings.worker_deployment_name, new_build_id)
        if ramp is None:
            await set_current(client, version)
        else:
            await set_ramping(client, version, ramp)

    _run(action)
    if ramp is None:
        out.print(f"{new_build_id} is current: new tracks start on it")
    else:
        out.print(f"{new_build_id} is ramping: {ramp:g}% of new tracks start on it")
    _exit()


@deploy_app.command("build-id")
def show_build_id() -> None:
    """This checkout's build id: the version its workers run as."""
    print(build_id(get_settings()))
