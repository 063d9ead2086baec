"""The `soundfoundry` command line: run the parts, manage users, make tracks, replay."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from core.settings import get_settings
from soundfoundry.backfill import backfill_app
from soundfoundry.deploy_cli import deploy_app
from soundfoundry.temporal_cli import run_with_temporal, temporal_app

app = typer.Typer(help="SoundFoundry: prompt in, finished track out.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users and their tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")
admin_app = typer.Typer(help="Operator tools: stuck jobs, bulk cancel.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
tokens_app = typer.Typer(help="A user's API tokens: create, list, revoke.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
app.add_typer(backfill_app, name="backfill")
app.add_typer(temporal_app, name="temporal")
app.add_typer(deploy_app, name="deploy")
err = Console(stderr=True)


class AudioFormat(StrEnum):
    FLAC = "flac"
    MP3 = "mp3"
    WAV = "wav"


def _refuse_to_start(problems: list[str]) -> None:
    """Exit 2 with every reason, before anything listens or connects."""
    if problems:
        for problem in problems:
            print(f"refusing to start: {problem}", file=sys.stderr)
        raise typer.Exit(2)


def _setup_logging() -> None:
    from core.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.secret_values())


@app.command()
def dev(
    api_port: Annotated[int, typer.Option(help="API port")] = 8000,
    temporal_port: Annotated[int, typer.Option(help="Temporal frontend port")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal Web UI port")] = 8233,
) -> None:
    """Run the whole stack on the embedded default (SQLite, local files, synth)."""
    from soundfoundry.devstack import DevStack

    raise typer.Exit(DevStack(api_port, temporal_port, ui_port).run())


@app.command()
def migrate() -> None:
    """Apply database migrations up to head (idempotent)."""
    from core.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    err.print("[green]migrations applied[/]")


@app.command()
def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (Temporal must already be running)."""
    import uvicorn

    from api.security import startup_problems

    # The app (and uvicorn's worker processes) learn where they listen from API_HOST:
    # DEV_AUTOLOGIN is refused unless it is loopback.
    os.environ["API_HOST"] = host
    get_settings.cache_clear()
    _refuse_to_start(startup_problems(get_settings()))
    _setup_logging()
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        proxy_headers=True,
        # Open event streams (the web UI's live status) must not hold a shutdown up.
        timeout_graceful_shutdown=5,
    )


@app.command()
def worker() -> None:
    """Run a Temporal worker for the track workflow (run several to scale out)."""
    from worker import main, startup_problems

    _refuse_to_start(startup_problems(get_settings()))
    main()


@users_app.command("create")
def users_create(
    credits: Annotated[int, typer.Option(min=0, help="starting credits")] = 100,
    name: Annotated[str, typer.Option()] = "user",
    plan: Annotated[str, typer.Option(help="free or pro")] = "free",
    admin: Annotated[bool, typer.Option(help="may use /api/admin")] = False,
) -> None:
    """Create a user; the API token is printed alone on the last line."""
    from core.db import create_engine, session_factory
    from core.models import Plan
    from domain.users import create_user

    try:
        chosen = Plan(plan)
    except ValueError:
        raise typer.BadParameter("plan must be free or pro", param_hint="--plan") from None

    async def run() -> str:
        engine = create_engine(get_settings().database_url)
        try:
            user, token = await create_user(
                session_factory(engine), name, credits, chosen, is_admin=admin
            )
            err.print(f"created user {user.id} ({name}, {chosen.value}, {credits} credits)")
            return token
        finally:
            await engine.dispose()

    print(asyncio.run(run()))


def _change_account(user: str, change: Any) -> tuple[str, str, int]:
    """Run `change(sessions, user_id)` for the user with this id or unique name; returns
    (id, plan, credits) after it."""
    from core.db import create_engine, session_factory
    from domain.users import UserNotFound, find_user

    async def run() -> tuple[str, str, int]:
        engine = create_engine(get_settings().database_url)
        try:
            sessions = session_factory(engine)
            changed = await change(sessions, (await find_user(sessions, user)).id)
            return str(changed.id), changed.plan.value, changed.credits
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except UserNotFound as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


@users_app.command("grant")
def users_grant(
    user: Annotated[str, typer.Argument(help="the user's id or name")],
    credits: Annotated[int, typer.Option(min=1, help="credits to add")],
) -> None:
    """Add credits to a user; the new balance is printed alone on the last line."""
    from domain.credits import grant_credits

    user_id, _, balance = _change_account(
        user, lambda sessions, user_id: grant_credits(sessions, user_id, credits)
    )
    err.print(f"granted {credits} credits to {user_id}")
    print(balance)


@users_app.command("set-plan")
def users_set_plan(
    user: Annotated[str, typer.Argument(help="the user's id or name")],
    plan: Annotated[str, typer.Argument(help="free or pro")],
) -> None:
    """Move a user to the free or pro plan (limits apply from the next request)."""
    from core.models import Plan
    from domain.users import set_plan

    try:
        chosen = Plan(plan)
    except ValueError:
        raise typer.BadParameter("plan must be free or pro", param_hint="PLAN") from None
    user_id, now_on, _ = _change_account(
        user, lambda sessions, user_id: set_plan(sessions, user_id, chosen)
    )
    print(f"{user_id} is on the {now_on} plan")


@app.command()
def create(
    prompt: Annotated[str, typer.Argument(help="What the track should sound like")],
    duration: Annotated[int, typer.Option(min=5, max=300, help="seconds")] = 30,
    vocals: Annotated[bool, typer.Option(help="with vocals")] = False,
    lyrics: Annotated[str | None, typer.Option()] = None,
    style_strength: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    wait: Annotated[bool, typer.Option(help="wait for the track and download it")] = False,
    out: Annotated[Path, typer.Option(help="where to save audio and cover")] = Path("."),
    audio_format: Annotated[
        AudioFormat,
        typer.Option("--format", help="audio to save: flac (lossless master), mp3 (stream) or wav"),
    ] = AudioFormat.FLAC,
    api_url: Annotated[str, typer.Option(envvar="SOUNDFOUNDRY_API")] = "http://localhost:8000",
    token: Annotated[str | None, typer.Option(envvar="SOUNDFOUNDRY_TOKEN")] = None,
) -> None:
    """Create a track through the API; with --wait, follow it and save the files."""
    token = token or _dev_token()
    body = {
        "prompt": prompt,
        "duration_s": duration,
        "has_vocals": vocals,
        "style_strength": style_strength,
        "lyrics": lyrics,
    }
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        created = http.post("/api/tracks", json=body)
        if created.status_code != 201:
            err.print(f"[red]{created.status_code}: {created.json().get('detail')}[/]")
            raise typer.Exit(1)
        job = created.json()
        err.print(
            f"track {job['track_id']} (job {job['job_id']}, {job['credits_required']} credits)"
        )
        if not wait:
            print(job["track_id"])
            return
        final = _follow(http, job["job_id"])
        if final["status"] != "COMPLETE":
            err.print(f"[red]job {final['status']}: {final.get('error_message')}[/]")
            raise typer.Exit(1)
        track = _mastered(http, str(job["track_id"]))
        out.mkdir(parents=True, exist_ok=True)
        fmt = audio_format.value
        link = http.get(f"/api/tracks/{job['track_id']}/download", params={"format": fmt})
        if link.status_code != 307:
            err.print(f"[red]{link.status_code}: {link.json().get('detail')}[/]")
            raise typer.Exit(1)
        audio = _download(link.headers["location"], out / f"{job['track_id']}.{fmt}", api_url)
        cover = _download(track["cover_url"], out / f"{job['track_id']}.svg")
        err.print(f"[green]saved[/] {audio} and {cover}")
        print(audio)


def _follow(http: httpx.Client, job_id: str) -> dict[str, object]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("QUEUED", total=1.0)
        while True:
            job = http.get(f"/api/jobs/{job_id}").json()
            progress.update(
                task, completed=job["progress"], description=f"{job['status']} · {job['step']}"
            )
            if job["status"] not in ("QUEUED", "RENDERING"):
                return dict(job)
            time.sleep(0.5)


def _mastered(http: httpx.Client, track_id: str, timeout_s: float = 600) -> dict[str, Any]:
    """The finished track once its mastered files are made (or mastering gave up)."""
    deadline = time.monotonic() + timeout_s
    with err.status("mastering"):
        while True:
            track: dict[str, Any] = http.get(f"/api/tracks/{track_id}").json()
            if track.get("renditions_state") != "pending" or time.monotonic() > deadline:
                return track
            time.sleep(0.5)


def _download(url: str, dest: Path, base_url: str = "") -> Path:
    # Local links are absolute already; a relative one is resolved against the API.
    url = url if "://" in url else base_url.rstrip("/") + url
    with httpx.stream("GET", url, timeout=60) as response:
        response.raise_for_status()
        with dest.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    return dest


def _dev_token() -> str:
    path = Path(".soundfoundry/dev-token")
    if not path.exists():
        err.print(
            "[red]no token: pass --token, set SOUNDFOUNDRY_TOKEN, or run `soundfoundry dev`[/]"
        )
        raise typer.Exit(2)
    return path.read_text().strip()


@app.command()
def doctor() -> None:
    """Check the database, Temporal, storage and providers: one pass/fail line each."""
    from core.logging import SecretScrubber
    from soundfoundry.doctor import run_checks

    settings = get_settings()
    # Configured logging honours LOG_LEVEL (unconfigured, every debug line would print).
    _setup_logging()
    scrub = SecretScrubber(settings.secret_values()).scrub
    checks = asyncio.run(run_checks(settings))
    out = Console(soft_wrap=True)
    for check in checks:
        mark = "[green]PASS[/]" if check.ok else "[red]FAIL[/]"
        out.print(f"{mark}  {check.name:<20} {scrub(check.detail)}", highlight=False)
    failed = sum(not check.ok for check in checks)
    out.print(f"{len(checks) - failed} passed, {failed} failed")
    raise typer.Exit(1 if failed else 0)


@admin_app.command("stuck")
def admin_stuck(
    minutes: Annotated[
        float, typer.Option(min=0, help="in the same state at least this long")
    ] = 15,
    state: Annotated[str | None, typer.Option(help="QUEUED or RENDERING")] = None,
) -> None:
    """List jobs stuck in QUEUED or RENDERING for longer than --minutes."""
    from rich.table import Table

    from core.contracts import JobStatus
    from core.db import create_engine, session_factory
    from domain.tracks.admin import stuck_jobs

    async def run() -> list[dict[str, object]]:
        engine = create_engine(get_settings().database_url)
        try:
            status = JobStatus(state.upper()) if state else None
            jobs = await stuck_jobs(session_factory(engine), minutes, status)
            return [job.model_dump(mode="json") for job in jobs]
        finally:
            await engine.dispose()

    jobs = asyncio.run(run())
    table = Table("job", "workflow", "status", "step", "minutes")
    for job in jobs:
        table.add_row(
            str(job["job_id"]),
            str(job["workflow_id"]),
            str(job["status"]),
            str(job["step"]),
            str(job["minutes_in_state"]),
        )
    Console(width=200).print(table)
    err.print(f"{len(jobs)} stuck job(s)")


@admin_app.command("cancel")
def admin_cancel(
    status: Annotated[str | None, typer.Option(help="QUEUED or RENDERING")] = None,
    provider: Annotated[str | None, typer.Option(help="fal, replicate or synth")] = None,
    user: Annotated[str | None, typer.Option(help="the owner's id or unique name")] = None,
    older_than: Annotated[
        int | None, typer.Option(help="started at least this many minutes ago")
    ] = None,
    query: Annotated[str | None, typer.Option(hidden=True)] = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
) -> None:
    """Cancel every running track workflow matching all the given filters (refunds, cancels
    provider jobs)."""
    from pydantic import ValidationError

    from core.db import create_engine, session_factory
    from core.temporal import client_for
    from domain.tracks.admin import CancelFilter, cancel_matching
    from domain.users import UserNotFound, find_user

    if query is not None:
        err.print("[red]--query is gone: filter with --status, --provider, --user, --older-than[/]")
        raise typer.Exit(2)

    async def owner_id(ref: str) -> str:
        engine = create_engine(get_settings().database_url)
        try:
            return str((await find_user(session_factory(engine), ref)).id)
        finally:
            await engine.dispose()

    fields: dict[str, object] = {
        "status": status.upper() if status else None,
        "provider": provider,
        "older_than_minutes": older_than,
    }
    try:
        fields["user_id"] = asyncio.run(owner_id(user)) if user else None
        criteria = CancelFilter.model_validate(fields)
    except UserNotFound as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    except ValidationError as exc:
        for problem in exc.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "filter"
            err.print(f"[red]{where}: {problem['msg']}[/]")
        raise typer.Exit(2) from None

    shown = ", ".join(f"{k}={v}" for k, v in criteria.model_dump(exclude_none=True).items())
    if not yes and not typer.confirm(f"Cancel every running track with {shown}?"):
        raise typer.Exit(1)

    async def run() -> list[str]:
        return await cancel_matching(await client_for(get_settings()), criteria)

    cancelled = run_with_temporal(run())
    for workflow_id in cancelled:
        print(workflow_id)
    err.print(f"cancelled {len(cancelled)} workflow(s)")


def _with_sessions(work: Any) -> Any:
    """Run `work(sessions)` against the configured database."""
    from core.db import create_engine, session_factory

    async def run() -> Any:
        engine = create_engine(get_settings().database_url)
        try:
            return await work(session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Argument(help="the user's id or name")],
    name: Annotated[str, typer.Option(help="what the token is for")] = "default",
    expires_in: Annotated[
        int | None, typer.Option(min=1, max=3650, help="days until it stops working")
    ] = None,
) -> None:
    """Create a token for a user; the token is printed alone on the last line."""
    from domain.tokens import issue_token
    from domain.users import UserNotFound, find_user

    async def work(sessions: Any) -> tuple[Any, str]:
        owner = await find_user(sessions, user)
        return await issue_token(sessions, owner.id, name, expires_in)

    try:
        row, token = _with_sessions(work)
    except UserNotFound as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    until = f", expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else ""
    err.print(f"created token {row.id} ({name}{until}) for user {row.user_id}")
    print(token)


@tokens_app.command("list")
def tokens_list(user: Annotated[str, typer.Argument(help="the user's id or name")]) -> None:
    """A user's tokens (never the tokens themselves)."""
    from rich.table import Table

    from domain.tokens import describe, list_tokens
    from domain.users import UserNotFound, find_user

    async def work(sessions: Any) -> list[dict[str, Any]]:
        owner = await find_user(sessions, user)
        return [describe(row) for row in await list_tokens(sessions, owner.id)]

    try:
        rows = _with_sessions(work)
    except UserNotFound as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None

    def when(moment: Any) -> str:
        return f"{moment:%Y-%m-%d %H:%M}" if moment else "-"

    table = Table("id", "name", "created", "last used", "expires", "revoked")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["name"],
            when(row["created_at"]),
            when(row["last_used_at"]),
            when(row["expires_at"]),
            when(row["revoked_at"]),
        )
    Console(width=200).print(table)
    err.print(f"{len(rows)} token(s), times in UTC")


@tokens_app.command("revoke")
def tokens_revoke(token_id: Annotated[str, typer.Argument(help="the token's id")]) -> None:
    """Revoke a token: requests with it fail at once, its open streams close soon after."""
    import uuid

    from domain.tokens import TokenNotFound, revoke_token

    try:
        parsed = uuid.UUID(token_id)
    except ValueError:
        raise typer.BadParameter("not a token id", param_hint="TOKEN_ID") from None
    try:
        row = _with_sessions(lambda sessions: revoke_token(sessions, parsed))
    except TokenNotFound as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    print(f"revoked {row.id} ({row.label}) of user {row.user_id}")


@app.command()
def replay(
    files: Annotated[list[Path] | None, typer.Argument(help="histories exported as JSON")] = None,
    query: Annotated[
        str | None, typer.Option(help="replay recent histories matching a list query")
    ] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
) -> None:
    """Replay histories against the current workflow code to catch non-determinism."""
    from core.temporal import client_for
    from soundfoundry import replay as replaying

    if not files and not query:
        raise typer.BadParameter("give history files or --query")

    async def run() -> int:
        failures = 0
        outcomes = await replaying.replay_files(list(files or []))
        if query:
            settings = get_settings()
            client = await client_for(settings)
            outcomes += [o async for o in replaying.replay_query(client, query, limit)]
        for outcome in outcomes:
            if outcome.error:
                failures += 1
                err.print(f"[red]FAIL[/] {outcome.workflow_id}: {outcome.error}")
            else:
                err.print(f"[green]ok[/]   {outcome.workflow_id}")
        err.print(f"{len(outcomes) - failures} replayed cleanly, {failures} failed")
        return 1 if failures else 0

    code = run_with_temporal(run())
    sys.exit(code)
