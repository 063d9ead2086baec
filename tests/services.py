"""Real backing services for tests: PostgreSQL, an S3 gateway (versitygw) and Temporal.

Every service runs on 127.0.0.1 on a free port, keeps its state in a private temporary
directory, and removes its processes and that directory on ``stop()``, including when
``start()`` fails half-way. Nothing here downloads anything: the binaries come from the
machine (PostgreSQL from apt) or from ``scripts/setup.sh`` (temporal, versitygw).

    with PostgresCluster() as pg:
        url = pg.create_database("scratch")        # postgresql+asyncpg://...

    with VersityGateway() as s3:
        s3.create_bucket("tracks")

    async with TemporalDevServer() as temporal:
        await temporal.client.start_workflow(...)
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import botocore.config
import botocore.session
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from core.contracts import SEARCH_ATTRIBUTES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"

TEMPORAL_CLI_VERSION = "1.5.1"
# Worker Versioning needs no flag on server 1.29; these only make a version that is no longer
# current report `drained` within seconds of its last pinned run closing (the server's
# defaults wait 3 min, then re-check every 3 min), so rollout tests can watch it happen.
# The suite's one server also sees every test stack's own task queues (two each) join the
# same deployment version; the server's default cap of 100 per version (a production
# version has two) would stop new stacks' workers from polling after 50.
WORKER_VERSIONING_TEST_TUNING = (
    "--dynamic-config-value", 'matching.wv.VersionDrainageStatusVisibilityGracePeriod="1s"',
    "--dynamic-config-value", 'matching.wv.VersionDrainageStatusRefreshInterval="1s"',
    "--dynamic-config-value", "matching.maxTaskQueuesInDeploymentVersion=100000",
    "--dynamic-config-value", "matching.maxTaskQueuesInDeployment=100000",
)  # fmt: skip
VERSITYGW_VERSION = "1.7.0"

SETUP_HINT = "run `scripts/setup.sh --test` from the project root (builds it once, then caches it)"


class ServiceError(RuntimeError):
    """A test service could not be started (the message says why and what to do)."""


# ------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------
def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class DevStackProcess:
    """`soundfoundry dev` started on free ports (see `start_dev_stack`)."""

    process: subprocess.Popen[str]
    api: int
    frontend: int
    ui: int
    env: dict[str, str]


def start_dev_stack(cwd: Path, soundfoundry: Path) -> DevStackProcess:
    """`soundfoundry dev` in `cwd` on free ports, on its embedded default whatever the
    caller's environment says about databases and storage. Its stdout is a text pipe."""
    api, frontend, ui = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "STORAGE_"))}
    process = subprocess.Popen(
        [str(soundfoundry), "dev", "--api-port", str(api),
         "--temporal-port", str(frontend), "--ui-port", str(ui)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    return DevStackProcess(process, api, frontend, ui, env)


def tool_cache_dir() -> Path:
    """Where scripts/setup.sh keeps the Go tools it builds."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "soundfoundry" / "bin"


def _resolve_tool(name: str, version: str, env_var: str) -> Path:
    """``$env_var``, then ``.venv/bin/<name>``, then the setup.sh cache; never downloads."""
    override = os.environ.get(env_var)
    if override:
        path = Path(override).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServiceError(f"{env_var}={override} is not an executable file")
    candidates = [PROJECT_ROOT / ".venv" / "bin" / name, tool_cache_dir() / f"{name}-{version}"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise ServiceError(f"{name} {version} not found (looked at ${env_var}, {looked}); {SETUP_HINT}")


def temporal_cli_path() -> Path:
    """The Temporal CLI used for the dev server: $TEMPORAL_CLI, .venv/bin/temporal, cache."""
    return _resolve_tool("temporal", TEMPORAL_CLI_VERSION, "TEMPORAL_CLI")


def versitygw_path() -> Path:
    """The versitygw binary: $VERSITYGW, .venv/bin/versitygw, cache."""
    return _resolve_tool("versitygw", VERSITYGW_VERSION, "VERSITYGW")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _run(cmd: Sequence[str], *, what: str, cwd: Path | None = None, timeout: float = 120) -> str:
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what} timed out after {timeout}s: {shlex.join(cmd)}") from exc
    if proc.returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
            f"{proc.stdout}{proc.stderr}".rstrip()
        )
    return proc.stdout


class _SyncService:
    """start()/stop() plus the ``with`` protocol; stop() runs even if start() fails."""

    def start(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------
def postgres_bindir() -> Path:
    """Directory holding initdb/pg_ctl: $PG_BINDIR, PATH, or /usr/lib/postgresql/*/bin."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override)
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        # Debian puts symlinks on PATH; pg_ctl wants its real directory (for `postgres`).
        return Path(found).resolve().parent

    def version_key(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path))

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True):
        if (Path(bindir) / "initdb").exists() and (Path(bindir) / "pg_ctl").exists():
            return Path(bindir)
    raise ServiceError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; "
        "run `scripts/setup.sh --test` (installs the `postgresql` apt package)"
    )


_SERVICE_USER = "soundfoundry-pg"


def _postgres_os_user() -> str | None:
    """As root, the unprivileged account to run the server as (postgres refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _SERVICE_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    _run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            _SERVICE_USER,
        ],
        what="creating a system user for PostgreSQL",
    )
    return _SERVICE_USER


def _as_user(user: str | None, cmd: Sequence[str]) -> list[str]:
    if user is None:
        return list(cmd)
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", "-s", "/bin/sh", user, "-c", shlex.join(cmd)]


_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresCluster(_SyncService):
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on 127.0.0.1:<free port>.

    Host connections need the generated password (scram-sha-256); the unix socket lives
    in the temp dir and is used for administration only.
    """

    superuser = "postgres"

    def __init__(self, database: str = "soundfoundry", *, start_timeout: float = 60) -> None:
        self.database = database
        self.start_timeout = start_timeout
        self.password = secrets.token_hex(16)
        self.host = LOOPBACK
        self.port = 0
        self.tmpdir: Path | None = None
        self._bindir: Path | None = None
        self._os_user: str | None = None

    # -- URLs -----------------------------------------------------------------------
    def dsn(self, database: str | None = None) -> str:
        """libpq-style URL; works with ``asyncpg.connect`` and psql."""
        name = database or self.database
        return f"postgresql://{self.superuser}:{self.password}@{self.host}:{self.port}/{name}"

    def url(self, database: str | None = None) -> str:
        """SQLAlchemy async URL (asyncpg driver), as the app's DATABASE_URL expects."""
        return self.dsn(database).replace("postgresql://", "postgresql+asyncpg://", 1)

    @property
    def async_url(self) -> str:
        return self.url()

    @property
    def sync_url(self) -> str:
        """Plain ``postgresql://`` URL of the default database (psql, asyncpg.connect)."""
        return self.dsn()

    # -- lifecycle -------------------------------------------------------------------
    @property
    def _data(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    def _pg(self, tool: str, *args: str, what: str, timeout: float = 120) -> str:
        assert self._bindir is not None and self.tmpdir is not None
        cmd = _as_user(self._os_user, [str(self._bindir / tool), *args])
        return _run(cmd, what=what, cwd=self.tmpdir, timeout=timeout)

    def _start(self) -> None:
        self._bindir = postgres_bindir()
        self._os_user = _postgres_os_user()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="sf-pg-"))
        pwfile = self.tmpdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            for path in (self.tmpdir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            probe = _as_user(self._os_user, ["test", "-w", str(self.tmpdir)])
            if subprocess.run(probe, cwd="/", check=False).returncode != 0:
                raise ServiceError(
                    f"user {self._os_user!r} cannot write {self.tmpdir}; "
                    "point TMPDIR at a directory every user can traverse (e.g. /tmp)"
                )

        self._pg(
            "initdb",
            "--pgdata",
            str(self._data),
            "--username",
            self.superuser,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            what="initdb",
        )
        pwfile.unlink()
        settings = {
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": f"'{self.tmpdir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        with (self._data / "postgresql.conf").open("a") as conf:
            conf.write("\n# soundfoundry test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

        # The port is checked just before use; retry if another process grabbed it.
        for attempt in range(3):
            self.port = free_port()
            try:
                self._pg(
                    "pg_ctl",
                    "start",
                    "--pgdata",
                    str(self._data),
                    "--log",
                    str(self.tmpdir / "postgres.log"),
                    "--wait",
                    "--timeout",
                    str(int(self.start_timeout)),
                    "-o",
                    f"-p {self.port}",
                    what="pg_ctl start",
                    timeout=self.start_timeout + 30,
                )
                break
            except ServiceError as exc:
                log = _tail(self.tmpdir / "postgres.log")
                if attempt < 2 and "could not bind" in log:
                    continue
                raise ServiceError(f"{exc}\n--- postgres.log ---\n{log}") from exc
        if self.database != "postgres":
            self.create_database(self.database)

    def _admin_sql(self, sql: str) -> str:
        assert self._bindir is not None and self.tmpdir is not None
        return _run(
            [
                str(self._bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.tmpdir),
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            what="psql",
            cwd=self.tmpdir,
        )

    def create_database(self, name: str) -> str:
        """Create an empty database and return its ``postgresql+asyncpg://`` URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"invalid database name {name!r} (letters, digits, _; max 63)")
        self._admin_sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        if not _DB_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        self._admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        tmpdir, self.tmpdir = self.tmpdir, None
        if tmpdir is None:
            return
        pidfile = tmpdir / "data" / "postmaster.pid"
        try:
            if pidfile.exists() and self._bindir is not None:
                cmd = [
                    str(self._bindir / "pg_ctl"),
                    "stop",
                    "--pgdata",
                    str(tmpdir / "data"),
                    "--mode",
                    "immediate",
                    "--wait",
                    "--timeout",
                    "30",
                ]
                subprocess.run(
                    _as_user(self._os_user, cmd),
                    cwd=tmpdir,
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
            if pidfile.exists():  # pg_ctl failed: kill the postmaster directly
                with contextlib.suppress(ValueError, OSError, IndexError):
                    os.kill(int(pidfile.read_text().splitlines()[0]), signal.SIGKILL)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------------------
# S3: versitygw with the posix backend
# ------------------------------------------------------------------------------------
def _supports_user_xattrs(path: Path) -> bool:
    try:
        os.setxattr(path, "user.soundfoundry-probe", b"1")
        os.removexattr(path, "user.soundfoundry-probe")
    except OSError:
        return False
    return True


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class VersityGateway(_SyncService):
    """versitygw serving S3 on 127.0.0.1:<free port> from a temp dir (posix backend).

    A fresh root access/secret key pair is generated per instance; requests are really
    authenticated (SigV4), so bad signatures and expired presigned URLs get 403.
    """

    region = "us-east-1"

    def __init__(self, *, start_timeout: float = 30) -> None:
        self.start_timeout = start_timeout
        self.access_key = "SF" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.host = LOOPBACK
        self.port = 0
        self.tmpdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``(aio)botocore`` ``session.create_client("s3", ...)``."""
        return {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }

    def _start(self) -> None:
        binary = versitygw_path()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="sf-s3-"))
        root = self.tmpdir / "root"
        root.mkdir()
        backend = ["posix"]
        if not _supports_user_xattrs(root):  # e.g. tmpfs on older kernels
            (self.tmpdir / "meta").mkdir()
            backend += ["--sidecar", str(self.tmpdir / "meta")]
        env = {
            **os.environ,
            "ROOT_ACCESS_KEY_ID": self.access_key,
            "ROOT_SECRET_ACCESS_KEY": self.secret_key,
        }
        log_path = self.tmpdir / "versitygw.log"
        for attempt in range(3):
            self.port = free_port()
            cmd = [
                str(binary),
                "--port",
                f"{self.host}:{self.port}",
                "--region",
                self.region,
                "--quiet",
                *backend,
                str(root),
            ]
            with log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.tmpdir,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            _stop_process(self._proc)
            log_text = _tail(log_path)
            if attempt < 2 and "address already in use" in log_text:
                continue
            raise ServiceError(
                f"versitygw did not become ready on {self.endpoint}\n"
                f"--- versitygw.log ---\n{log_text}"
            )

    def _wait_ready(self) -> bool:
        """True once the gateway answers HTTP (any status); False if it exits or times out."""
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            try:
                conn.request("GET", "/")
                conn.getresponse().read()
                return True
            except OSError:
                time.sleep(0.1)
            finally:
                conn.close()
        return False

    def s3_client(self) -> Any:
        """A synchronous botocore S3 client (path-style, SigV4) for setup work."""
        session = botocore.session.get_session()
        return session.create_client(
            "s3",
            config=botocore.config.Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
            ),
            **self.client_kwargs(),
        )

    def create_bucket(self, name: str) -> str:
        """Create ``name`` (no error if we already own it) and return it."""
        client = self.s3_client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        finally:
            client.close()
        return name

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        tmpdir, self.tmpdir = self.tmpdir, None
        try:
            _stop_process(proc)
        finally:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)


# ------------------------------------------------------------------------------------
# Temporal dev server
# ------------------------------------------------------------------------------------
SOUNDFOUNDRY_SEARCH_ATTRIBUTES: tuple[SearchAttributeKey[Any], ...] = SEARCH_ATTRIBUTES
"""The custom search attributes SoundFoundry workflows use (all Keyword)."""


class TemporalDevServer:
    """``temporal server start-dev`` via ``WorkflowEnvironment.start_local`` (async).

    Uses the CLI built by scripts/setup.sh (never downloads), in-memory SQLite, the
    pydantic data converter, and registers ``search_attributes`` at startup.
    """

    def __init__(
        self,
        *,
        search_attributes: Sequence[SearchAttributeKey[Any]] = SOUNDFOUNDRY_SEARCH_ATTRIBUTES,
        namespace: str = "default",
        ui: bool = True,
        startup_timeout: float = 60,
        cli_path: Path | None = None,
        data_converter: DataConverter = pydantic_data_converter,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.search_attributes = tuple(search_attributes)
        self.namespace = namespace
        self.ui = ui
        self.startup_timeout = startup_timeout
        self.cli_path = cli_path
        self.data_converter = data_converter
        self.extra_args = tuple(extra_args)
        self.port = 0
        self.ui_port: int | None = None
        self._env: WorkflowEnvironment | None = None

    @property
    def env(self) -> WorkflowEnvironment:
        """The ``temporalio.testing.WorkflowEnvironment``."""
        if self._env is None:
            raise ServiceError("TemporalDevServer is not started")
        return self._env

    @property
    def client(self) -> Client:
        """A connected ``temporalio.client.Client`` (pydantic data converter)."""
        return self.env.client

    @property
    def target_host(self) -> str:
        """``host:port`` of the frontend gRPC service, for ``Client.connect``."""
        target: str = self.env.client.service_client.config.target_host
        return target

    @property
    def ui_url(self) -> str | None:
        return f"http://{LOOPBACK}:{self.ui_port}" if self.ui_port else None

    async def start(self) -> Self:
        cli = self.cli_path or temporal_cli_path()
        last_error: BaseException | None = None
        for _attempt in range(2):  # a second try with new ports if one was taken meanwhile
            self.port = free_port()
            self.ui_port = free_port() if self.ui else None
            try:
                self._env = await WorkflowEnvironment.start_local(
                    namespace=self.namespace,
                    data_converter=self.data_converter,
                    ip=LOOPBACK,
                    port=self.port,
                    ui=self.ui,
                    ui_port=self.ui_port,
                    search_attributes=self.search_attributes,
                    dev_server_existing_path=str(cli),
                    dev_server_log_level="warn",
                    dev_server_extra_args=[*WORKER_VERSIONING_TEST_TUNING, *self.extra_args],
                    dev_server_startup_timeout=timedelta(seconds=self.startup_timeout),
                )
                return self
            except Exception as exc:
                last_error = exc
        self.ui_port = None
        raise ServiceError(f"Temporal dev server ({cli}) failed to start: {last_error}") from (
            last_error
        )

    async def stop(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            await env.shutdown()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
