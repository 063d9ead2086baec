"""The `soundfoundry` command line: run the parts, manage users, make tracks, replay."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from core.settings import get_settings

app = typer.Typer(help="SoundFoundry: prompt in, finished track out.", no_args_is_help=True)
users_app = typer.Typer(help="Manage users and their tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")
err = Console(stderr=True)


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

    _setup_logging()
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        proxy_headers=True,
    )


@app.command()
def worker() -> None:
    """Run a Temporal worker for the track workflow (run several to scale out)."""
    from worker import main

    main()


@users_app.command("create")
def users_create(
    credits: Annotated[int, typer.Option(min=0, help="starting credits")] = 100,
    name: Annotated[str, typer.Option()] = "user",
    plan: Annotated[str, typer.Option(help="free or pro")] = "free",
) -> None:
    """Create a user; the API token is printed alone on the last line."""
    from core.db import create_engine, session_factory
    from core.models import Plan
    from core.users import create_user

    try:
        chosen = Plan(plan)
    except ValueError:
        raise typer.BadParameter("plan must be free or pro", param_hint="--plan") from None

    async def run() -> str:
        engine = create_engine(get_settings().database_url)
        try:
            user, token = await create_user(session_factory(engine), name, credits, chosen)
            err.print(f"created user {user.id} ({name}, {chosen.value}, {credits} credits)")
            return token
        finally:
            await engine.dispose()

    print(asyncio.run(run()))


@app.command()
def create(
    prompt: Annotated[str, typer.Argument(help="What the track should sound like")],
    duration: Annotated[int, typer.Option(min=5, max=300, help="seconds")] = 30,
    vocals: Annotated[bool, typer.Option(help="with vocals")] = False,
    lyrics: Annotated[str | None, typer.Option()] = None,
    style_strength: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
    wait: Annotated[bool, typer.Option(help="wait for the track and download it")] = False,
    out: Annotated[Path, typer.Option(help="where to save audio and cover")] = Path("."),
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
        track = http.get(f"/api/tracks/{job['track_id']}").json()
        out.mkdir(parents=True, exist_ok=True)
        audio = _download(
            track["file_url"],
            out / f"{job['track_id']}.{track['audio']['content_type'].split('/')[-1]}",
        )
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


def _download(url: str, dest: Path) -> Path:
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
def replay(
    files: Annotated[list[Path] | None, typer.Argument(help="histories exported as JSON")] = None,
    query: Annotated[
        str | None, typer.Option(help="replay recent histories matching a list query")
    ] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
) -> None:
    """Replay histories against the current workflow code to catch non-determinism."""
    from soundfoundry import replay as replaying

    if not files and not query:
        raise typer.BadParameter("give history files or --query")

    async def run() -> int:
        failures = 0
        outcomes = await replaying.replay_files(list(files or []))
        if query:
            settings = get_settings()
            client = await replaying.connect(settings.temporal_address, settings.temporal_namespace)
            outcomes += [o async for o in replaying.replay_query(client, query, limit)]
        for outcome in outcomes:
            if outcome.error:
                failures += 1
                err.print(f"[red]FAIL[/] {outcome.workflow_id}: {outcome.error}")
            else:
                err.print(f"[green]ok[/]   {outcome.workflow_id}")
        err.print(f"{len(outcomes) - failures} replayed cleanly, {failures} failed")
        return 1 if failures else 0

    code = asyncio.run(run())
    sys.exit(code)
