"""`soundfoundry dev`: the whole product on one machine, on the embedded default.

Temporal's dev server (SQLite, Web UI), one worker and the API run as child processes;
the database is SQLite and objects live in a local folder, all under `.soundfoundry/`.
Ctrl-C (or SIGTERM, SIGHUP) stops them in reverse order; if `soundfoundry dev` itself is
killed, the kernel stops them (parent-death signal), so nothing is left holding the ports.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from api.security import startup_problems
from core.db import create_engine, session_factory
from core.migrate import upgrade
from core.settings import Settings
from core.temporal import SEARCH_ATTRIBUTE_NAMES, client_for
from domain.users import create_user, user_for_token

STATE_DIR = Path(".soundfoundry")
# Signals that end the stack as Ctrl-C does: a terminal closed, a service manager, a quit.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_PR_SET_PDEATHSIG = 1
DEV_USER = "dev"
DEV_CREDITS = 1000


def temporal_cli() -> Path:
    """The Temporal CLI built by the set-up; never downloaded at run time."""
    candidates = [
        os.environ.get("TEMPORAL_CLI"),
        str(Path(sys.prefix) / "bin" / "temporal"),
        str(
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            / "soundfoundry/bin/temporal-1.5.1"
        ),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "the temporal CLI was not found; run scripts/setup.sh (or set TEMPORAL_CLI)"
    )


# Measured (bench/pipeline.py --timeline): on the dev server's defaults every task waits
# ~45 ms before its worker sees it, because the history queues read new tasks at most 20
# times a second; with eager activity dispatch an activity skips matching altogether.
DEV_SERVER_TUNING = (
    "--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000",
    "--dynamic-config-value", "history.timerProcessorMaxPollRPS=1000",
    "--dynamic-config-value", "history.visibilityProcessorMaxPollRPS=1000",
    "--dynamic-config-value", "system.enableActivityEagerExecution=true",
)  # fmt: skip


def temporal_dev_command(
    binary: Path, *, port: int, ui_port: int, db_file: Path | None, namespace: str
) -> list[str]:
    command = [
        str(binary), "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--namespace", namespace,
        "--log-level", "warn",
        *DEV_SERVER_TUNING,
    ]  # fmt: skip
    if db_file is not None:
        command += ["--db-filename", str(db_file)]
    for name in SEARCH_ATTRIBUTE_NAMES:
        command += ["--search-attribute", f"{name}=Keyword"]
    return command


def wait_for_port(
    port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before port {port} opened"
            )
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s:.0f} s")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `soundfoundry dev` dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


async def wait_for_pollers(settings: Settings, timeout_s: float) -> None:
    """Until a worker polls the task queue for workflow and activity tasks alike: a track
    created before that would only sit in the queue."""
    client = await client_for(settings)
    deadline = time.monotonic() + timeout_s
    kinds = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)
    while True:
        polled = [
            await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=settings.task_queue),
                    task_queue_type=kind,
                )
            )
            for kind in kinds
        ]
        if all(answer.pollers for answer in polled):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker polled {settings.task_queue!r} within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


# What the dev stack keeps of a shell's TEMPORAL_* variables when it runs its own server.
DEV_TEMPORAL_KEPT = frozenset({"TEMPORAL_NAMESPACE", "TEMPORAL_UI_URL"})


def dev_environment(api_port: int, temporal_port: int, ui_port: int) -> dict[str, str]:
    """Defaults for the embedded stack; anything already in the environment wins."""
    STATE_DIR.mkdir(exist_ok=True)
    secret_file = STATE_DIR / "secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    defaults = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{STATE_DIR / 'soundfoundry.db'}",
        "STORAGE_BACKEND": "local",
        "STORAGE_LOCAL_DIR": str(STATE_DIR / "objects"),
        "PUBLIC_BASE_URL": f"http://localhost:{api_port}",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "TEMPORAL_UI_URL": f"http://localhost:{ui_port}",
        "SECRET_KEY": secret_file.read_text().strip(),
        # The web UI at the API address signs in as the dev user, through the sign-in
        # link printed at start (loopback only); its secret is new on every run.
        "DEV_AUTOLOGIN": "true",
        "DEV_LOGIN_SECRET": secrets.token_urlsafe(32),
        # Worker Versioning: the code on disk is the version new tracks run on, at once;
        # tracks left in flight by older code stay on theirs (docs/operations-rollout.md).
        "WORKER_MAKE_CURRENT": "always",
    }
    env = dict(os.environ)
    if "TEMPORAL_ADDRESS" not in env:
        # Our own plaintext dev server: a shell's TLS, API key or profile (for another
        # cluster, read by the SDK's environment configuration) must not reach it.
        for key in [k for k in env if k.startswith("TEMPORAL_") and k not in DEV_TEMPORAL_KEPT]:
            del env[key]
        env["TEMPORAL_CONFIG_FILE"] = str(STATE_DIR / "no-temporal-profile.toml")
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


async def dev_token(settings: Settings, existing: str | None) -> str:
    """Reuse the dev user's token across restarts; make the user the first time."""
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    try:
        if existing and await user_for_token(sessions, existing) is not None:
            return existing
        _, token = await create_user(sessions, DEV_USER, DEV_CREDITS)
        return token
    finally:
        await engine.dispose()


def ensure_dev_token(settings: Settings, token_file: Path) -> str:
    existing = token_file.read_text().strip() if token_file.exists() else None
    token = asyncio.run(dev_token(settings, existing))
    if token != existing:
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
    return token


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@dataclass
class DevStack:
    api_port: int = 8000
    temporal_port: int = 7233
    ui_port: int = 8233
    console: Console = field(default_factory=lambda: Console(stderr=True))
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def run(self) -> int:
        # From the first moment: a stop signal during start-up still stops what started.
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, _interrupt)
        env = dev_environment(self.api_port, self.temporal_port, self.ui_port)
        os.environ.clear()  # what dev_environment dropped goes too
        os.environ.update(env)
        settings = Settings()
        # What `soundfoundry api` would refuse (it listens on loopback here), said up front.
        problems = startup_problems(settings.model_copy(update={"api_host": "127.0.0.1"}))
        if problems:
            for problem in problems:
                self.console.print(f"[red]refusing to start: {problem}[/]", soft_wrap=True)
            return 2
        try:
            self._start_temporal(env, settings)
            with self.console.status("Applying database migrations"):
                upgrade(settings.database_url)
            token = ensure_dev_token(settings, STATE_DIR / "dev-token")
            self._spawn("worker", [sys.executable, "-m", "soundfoundry", "worker"], env)
            self._spawn(
                "api",
                [sys.executable, "-m", "soundfoundry", "api", "--port", str(self.api_port)],
                env,
            )
            with self.console.status("Waiting for the worker and the API"):
                wait_for_port(self.api_port, 60, self.processes[-1][1])
                asyncio.run(wait_for_pollers(settings, 60))
            self._announce(token, settings)
            return self._supervise()
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop()

    def _start_temporal(self, env: dict[str, str], settings: Settings) -> None:
        command = temporal_dev_command(
            temporal_cli(),
            port=self.temporal_port,
            ui_port=self.ui_port,
            db_file=STATE_DIR / "temporal.db",
            namespace=settings.temporal_namespace,
        )
        with self.console.status("Starting the Temporal dev server"):
            process = self._spawn("temporal", command, env)
            wait_for_port(self.temporal_port, 60, process)
            wait_for_port(self.ui_port, 30, process)

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # Children get their own process group so our Ctrl-C handling decides the order.
        process = subprocess.Popen(
            command, env=env, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.processes.append((name, process))
        return process

    def _announce(self, token: str, settings: Settings) -> None:
        c = self.console
        c.print("\n[bold green]SoundFoundry is running[/]")
        c.print(f"  API          http://localhost:{self.api_port}  (docs: /docs)")
        if settings.dev_autologin and settings.dev_login_secret is not None:
            secret = settings.dev_login_secret.get_secret_value()
            link = f"http://localhost:{self.api_port}/?login={secret}"
            c.print(f"  Sign in      {link}", soft_wrap=True, highlight=False)
        c.print(f"  Temporal UI  http://localhost:{self.ui_port}")
        c.print(f"  Temporal     127.0.0.1:{self.temporal_port}")
        c.print(f"  Dev token    saved in {STATE_DIR / 'dev-token'}")
        c.print("Press Ctrl-C to stop.\n")
        print(f"SOUNDFOUNDRY_TOKEN={token}", flush=True)

    def _supervise(self) -> int:
        while True:
            for name, process in self.processes:
                if process.poll() is not None:
                    self.console.print(f"[red]{name} exited with {process.returncode}[/]")
                    return 1
            time.sleep(0.5)

    def stop(self) -> None:
        # A second signal while stopping must not cut the orderly stop short.
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_IGN)
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.console.print(f"[yellow]{name} did not stop in time; killing it[/]")
                    process.kill()
                    process.wait()
        self.processes.clear()
