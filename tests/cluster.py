"""A production topology on loopback, with no container engine.

    PostgreSQL (deploy/postgres/init.sql: the app's database, Temporal's persistence and
               SQL visibility, each owned by its own role)
    temporal-server, as two processes sharing one membership ring:
        frontend                    mTLS only: a client needs a certificate from our CA
        history + matching + worker keep running while the frontend restarts
    versitygw (S3)
    SoundFoundry: `soundfoundry api` x2 and `soundfoundry worker` x2

Temporal's schemas are installed and updated with temporal-sql-tool, and the namespace and
search attributes created with the `temporal` CLI and a client certificate, as an operator
does it. SoundFoundry processes are configured for Temporal only through the standard
environment variables the SDK's `temporalio.envconfig` and the CLI read (TEMPORAL_ADDRESS,
TEMPORAL_NAMESPACE, TEMPORAL_TLS_*), never through settings of our own.

    with Topology(env={"MUSIC_PROVIDERS": "synth"}) as topology:
        topology.api_urls            # two APIs: spread requests as a load balancer would
        topology.kill_worker(0)      # SIGKILL
        topology.cluster.restart_frontend()

tests/e2e/test_cluster_*.py, bench/pipeline.py --topology and scripts/production-local
use it. It lives here, outside the shipped packages, because it runs throwaway services
(initdb, a test CA) that belong to no product layer; import-linter governs the packages
only, so a script in scripts/ may import it from a checkout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import ipaddress
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.temporal import SEARCH_ATTRIBUTE_NAMES
from tests.services import (
    LOOPBACK,
    PROJECT_ROOT,
    SETUP_HINT,
    PostgresCluster,
    ServiceError,
    VersityGateway,
    _SyncService,
    free_port,
    postgres_bindir,
    temporal_cli_path,
    tool_cache_dir,
)

SETUP_SH = PROJECT_ROOT / "scripts" / "setup.sh"
INIT_SQL = PROJECT_ROOT / "deploy" / "postgres" / "init.sql"
DYNAMIC_CONFIG = PROJECT_ROOT / "deploy" / "temporal" / "dynamicconfig.yaml"
SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"
SERVER_NAME = "localhost"  # the name on the frontend's certificate


def server_version() -> str:
    """The one pinned temporal-server version (scripts/setup.sh; the compose file agrees)."""
    match = re.search(r'^TEMPORAL_SERVER_VERSION="([^"]+)"$', SETUP_SH.read_text(), re.M)
    if not match:
        raise ServiceError(f"TEMPORAL_SERVER_VERSION not found in {SETUP_SH}")
    return match.group(1)


def _tool(name: str, env_var: str) -> Path:
    override = os.environ.get(env_var)
    candidates = [Path(override)] if override else []
    candidates += [
        PROJECT_ROOT / ".venv" / "bin" / name,
        tool_cache_dir() / f"{name}-{server_version()}",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServiceError(f"{name} {server_version()} not found; {SETUP_HINT}")


def temporal_server_path() -> Path:
    return _tool("temporal-server", "TEMPORAL_SERVER")


def temporal_sql_tool_path() -> Path:
    return _tool("temporal-sql-tool", "TEMPORAL_SQL_TOOL")


def temporal_schema_dir() -> Path:
    """`postgresql/v12/{temporal,visibility}` of the pinned server (copied by setup.sh)."""
    for path in (
        PROJECT_ROOT / ".venv" / "share" / "temporal-schema",
        tool_cache_dir() / f"temporal-schema-{server_version()}",
    ):
        if (path / "postgresql" / "v12" / "temporal" / "versioned").is_dir():
            return path
    raise ServiceError(f"Temporal's schema files not found; {SETUP_HINT}")


def _run(cmd: Sequence[str], *, what: str, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        list(cmd),
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {done.returncode}): {shlex.join(cmd)}\n"
            f"{done.stdout}{done.stderr}".rstrip()
        )
    return done.stdout


def _answers_ready(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


def _logged(proc: Proc, text: str) -> bool:
    return text in proc.output()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# ------------------------------------------------------------------------------------
# A throwaway certificate authority
# ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


class CertificateAuthority:
    """A CA made for one run: it signs the frontend's certificate and the clients'."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self._cert = (
            self._builder(subject, self._key.public_key())
            .issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = directory / f"{name}-ca.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _builder(
        subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def issue(self, name: str, *, server: bool = False) -> KeyPair:
        """A leaf certificate: a client's (CN=name), or the frontend's (for localhost and
        127.0.0.1)."""
        key = ec.generate_private_key(ec.SECP256R1())
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key()
            )
            .issuer_name(self._cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
                ),
                critical=False,
            )
        cert = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(
            self._key, hashes.SHA256()
        )
        pair = KeyPair(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pair.key.chmod(0o600)
        return pair


# ------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------
@dataclass
class Proc:
    """One long-running child: its command, environment and log, so it can be restarted."""

    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    port: int | None = None  # where it serves, if it does
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where this run's output starts in the log

    def output(self) -> str:
        """What the current run has logged so far."""
        with contextlib.suppress(OSError), self.log.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")
        return ""

    def start(self) -> Proc:
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crashed machine or the OOM killer does."""
        self._signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if not self.alive():
            return
        self._signal(signal.SIGTERM)
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait(self, timeout: float) -> None:
        assert self.process is not None
        self.process.wait(timeout)

    def _signal(self, signum: int) -> None:
        # The whole process group: `soundfoundry api` forks uvicorn workers.
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def tail(self, chars: int = 3000) -> str:
        """The end of the log; for a temporal-server, its fatal message first (a Go stack
        trace follows it and would fill the tail)."""
        text = _tail(self.log, chars)
        fatal = [line[:600] for line in self.output().splitlines() if '"level":"fatal"' in line]
        return "\n".join([*fatal[-2:], text])


def wait_until(
    check: Callable[[], bool], what: str, timeout_s: float, procs: Sequence[Proc] = ()
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in procs:
            if not proc.alive():
                raise ServiceError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        with contextlib.suppress(OSError, httpx.HTTPError):
            if check():
                return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in procs)
            raise ServiceError(f"{what}: not within {timeout_s:.0f} s\n{logs}")
        time.sleep(0.25)


# ------------------------------------------------------------------------------------
# Temporal: temporal-server on PostgreSQL, mTLS on the frontend
# ------------------------------------------------------------------------------------
TEMPORAL_ROLE = "temporal"
STORES = {"temporal": "temporal", "visibility": "temporal_visibility"}


def free_low_port() -> int:
    """A free port below 32768. Temporal's SQL schema keeps a member's port in a smallint
    (cluster_membership.rpc_port): a port from the kernel's ephemeral range (32768 and up
    on Linux) stops the server at start ("out of range for type smallint")."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise ServiceError("no free port below 32768 on 127.0.0.1")


@dataclass
class TemporalPorts:
    frontend: int = field(default_factory=free_low_port)
    frontend_http: int = field(default_factory=free_low_port)
    frontend_membership: int = field(default_factory=free_low_port)
    history: int = field(default_factory=free_low_port)
    history_membership: int = field(default_factory=free_low_port)
    matching: int = field(default_factory=free_low_port)
    matching_membership: int = field(default_factory=free_low_port)
    worker: int = field(default_factory=free_low_port)
    worker_membership: int = field(default_factory=free_low_port)


class TemporalCluster:
    """temporal-server on `postgres` (whose init.sql already ran), started as an operator
    would: schemas, then the services, then the namespace and search attributes."""

    def __init__(
        self,
        postgres: PostgresCluster,
        db_password: str,
        directory: Path,
        *,
        namespace: str = "default",
        retention: str = "72h",
        history_shards: int = 4,
    ) -> None:
        self.postgres = postgres
        self.db_password = db_password
        self.dir = directory
        self.namespace = namespace
        self.retention = retention
        self.history_shards = history_shards
        self.ports = TemporalPorts()
        self.certs = directory / "certs"
        self.certs.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.ca = CertificateAuthority(self.certs, "cluster")
        self.frontend_pair = self.ca.issue("frontend", server=True)
        self.system_worker = self.ca.issue("temporal-system-worker")
        self.operator = self.ca.issue("operator")
        self.app = self.ca.issue("soundfoundry")
        self.frontend: Proc | None = None
        self.backend: Proc | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.ports.frontend}"

    def client_env(self, pair: KeyPair | None = None) -> dict[str, str]:
        """The standard variables (`temporalio.envconfig`, the `temporal` CLI) that reach
        this cluster with `pair` (default: SoundFoundry's certificate)."""
        pair = pair or self.app
        return {
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_NAMESPACE": self.namespace,
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pair.cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pair.key),
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(self.ca.cert),
            "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
        }

    # -- operator steps -------------------------------------------------------------
    def install_schemas(self) -> None:
        """`setup-schema -v 0.0` then `update-schema` to this server's version, per store
        (the staging compose file's temporal-schema job runs the same steps)."""
        tool = str(temporal_sql_tool_path())
        schema = temporal_schema_dir() / "postgresql" / "v12"
        env = {
            **os.environ,
            "SQL_PLUGIN": "postgres12",
            "SQL_HOST": self.postgres.host,
            "SQL_PORT": str(self.postgres.port),
            "SQL_USER": TEMPORAL_ROLE,
            "SQL_PASSWORD": self.db_password,
        }
        for store, database in STORES.items():
            _run(
                [tool, "--db", database, "setup-schema", "-v", "0.0"],
                what=f"setup-schema {database}",
                env=env,
            )
            _run(
                [tool, "--db", database, "update-schema", "-d", str(schema / store / "versioned")],
                what=f"update-schema {database}",
                env=env,
            )

    def cli(
        self, *args: str, pair: KeyPair | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The real `temporal` CLI, configured only by the standard variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
        env.update(self.client_env(pair or self.operator))
        done = subprocess.run(
            [str(temporal_cli_path()), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and done.returncode != 0:
            raise ServiceError(f"temporal {shlex.join(args)} failed:\n{done.stderr}")
        return done

    def create_namespace(self) -> None:
        if (
            self.cli(
                "operator", "namespace", "describe", "--namespace", self.namespace, check=False
            ).returncode
            == 0
        ):
            return
        self.cli(
            "operator",
            "namespace",
            "create",
            "--namespace",
            self.namespace,
            "--retention",
            self.retention,
        )

    def register_search_attributes(self, timeout_s: float = 60) -> None:
        """Retried while the new namespace is not yet in the frontend's namespace cache
        ("Namespace default is not found" for a second or two after `create`)."""
        pairs = [
            arg for name in SEARCH_ATTRIBUTE_NAMES for arg in ("--name", name, "--type", "Keyword")
        ]

        def registered() -> bool:
            done = self.cli(
                "operator",
                "search-attribute",
                "create",
                "--namespace",
                self.namespace,
                *pairs,
                check=False,
            )
            if done.returncode != 0 and "not found" not in done.stderr:
                raise ServiceError(f"search-attribute create failed:\n{done.stderr}")
            return done.returncode == 0

        assert self.frontend is not None and self.backend is not None
        wait_until(
            registered, "search attributes registered", timeout_s, [self.frontend, self.backend]
        )

    def wait_search_attributes_usable(self, timeout_s: float = 60) -> None:
        """Until a start that sets every attribute is accepted: SQL visibility maps custom
        attributes per namespace, and each service's namespace cache learns of them on
        its next refresh, seconds after `search-attribute create` returned."""
        attrs = [
            arg
            for name in SEARCH_ATTRIBUTE_NAMES
            for arg in ("--search-attribute", f'{name}="probe"')
        ]
        probe = f"sf-attributes-probe-{secrets.token_hex(4)}"

        def accepted() -> bool:
            done = self.cli(
                "workflow",
                "start",
                "--type",
                "Probe",
                "--task-queue",
                probe,
                "--workflow-id",
                probe,
                *attrs,
                check=False,
            )
            return done.returncode == 0

        assert self.frontend is not None and self.backend is not None
        wait_until(accepted, "search attributes usable", timeout_s, [self.frontend, self.backend])
        self.cli("workflow", "terminate", "--workflow-id", probe, "--reason", "probe")

    # -- services -------------------------------------------------------------------
    def _config(self) -> dict[str, object]:
        def store(database: str, conns: int) -> dict[str, object]:
            return {
                "sql": {
                    "pluginName": "postgres12",
                    "databaseName": database,
                    "connectAddr": f"{self.postgres.host}:{self.postgres.port}",
                    "connectProtocol": "tcp",
                    "user": TEMPORAL_ROLE,
                    "password": self.db_password,
                    # Per service and store: the connection budget of docs/deployment.md.
                    "maxConns": conns,
                    "maxIdleConns": conns,
                    "maxConnLifetime": "1h",
                }
            }

        def rpc(grpc: int, membership: int, **extra: int) -> dict[str, object]:
            return {
                "rpc": {
                    "grpcPort": grpc,
                    "membershipPort": membership,
                    "bindOnLocalHost": True,
                    **extra,
                }
            }

        p = self.ports
        client_tls = {"serverName": SERVER_NAME, "rootCaFiles": [str(self.ca.cert)]}
        return {
            # info: the start-up check reads "Started Worker" from the backend's log.
            "log": {"stdout": True, "level": "info"},
            "persistence": {
                "numHistoryShards": self.history_shards,
                "defaultStore": "default",
                "visibilityStore": "visibility",
                "datastores": {
                    "default": store("temporal", 10),
                    "visibility": store("temporal_visibility", 4),
                },
            },
            "global": {
                "membership": {"maxJoinDuration": "30s", "broadcastAddress": LOOPBACK},
                "tls": {
                    "frontend": {
                        "server": {
                            "certFile": str(self.frontend_pair.cert),
                            "keyFile": str(self.frontend_pair.key),
                            "requireClientAuth": True,
                            "clientCaFiles": [str(self.ca.cert)],
                        },
                        "client": client_tls,
                    },
                    # The system worker (history+matching's process) is a frontend client.
                    "systemWorker": {
                        "certFile": str(self.system_worker.cert),
                        "keyFile": str(self.system_worker.key),
                        "client": client_tls,
                    },
                },
            },
            "services": {
                "frontend": rpc(p.frontend, p.frontend_membership, httpPort=p.frontend_http),
                "history": rpc(p.history, p.history_membership),
                "matching": rpc(p.matching, p.matching_membership),
                "worker": rpc(p.worker, p.worker_membership),
            },
            "clusterMetadata": {
                "enableGlobalNamespace": False,
                "failoverVersionIncrement": 10,
                "masterClusterName": "active",
                "currentClusterName": "active",
                "clusterInformation": {
                    "active": {
                        "enabled": True,
                        "initialFailoverVersion": 1,
                        "rpcName": "frontend",
                        "rpcAddress": self.address,
                    }
                },
            },
            "dcRedirectionPolicy": {"policy": "noop"},
            # The staging compose file mounts the same file.
            "dynamicConfigClient": {"filepath": str(DYNAMIC_CONFIG), "pollInterval": "10s"},
        }

    def _proc(self, name: str, services: Sequence[str]) -> Proc:
        command = [
            str(temporal_server_path()),
            "--root",
            str(self.dir),
            "--config",
            "config",
            "--env",
            "topology",
            "--allow-no-auth",
            "start",
        ]
        for service in services:
            command += ["--service", service]
        return Proc(name, command, dict(os.environ), self.dir / f"{name}.log", self.dir)

    def start(self) -> None:
        config_dir = self.dir / "config"
        config_dir.mkdir(mode=0o700, exist_ok=True)
        (config_dir / "topology.yaml").write_text(yaml.safe_dump(self._config(), sort_keys=False))
        self.install_schemas()
        self.backend = self._proc("temporal-history-matching", ["history", "matching", "worker"])
        self.frontend = self._proc("temporal-frontend", ["frontend"])
        # The frontend first: the backend's system worker starts its workflows through
        # it at start-up and exits if it cannot within seconds. On a loaded machine it may
        # still lose that race: restarted as a service manager would (Restart=on-failure).
        self.frontend.start()
        wait_until(
            lambda: _listening(self.ports.frontend), "the frontend's port", 60, [self.frontend]
        )
        self.backend.start()
        for attempt in range(3):
            try:
                self.wait_serving()
                wait_until(
                    lambda: not self.backend_starting(),
                    "the system worker",
                    60,
                    [self.frontend, self.backend],
                )
                break
            except ServiceError:
                if self.backend.alive() or attempt == 2:
                    raise
                self.backend.start()
        self.create_namespace()
        self.register_search_attributes()
        self.wait_search_attributes_usable()

    def backend_starting(self) -> bool:
        """Until the system worker (in the backend process) has started its workers."""
        assert self.backend is not None
        return "Started Worker" not in self.backend.output()

    def wait_serving(self, timeout_s: float = 90) -> None:
        assert self.frontend is not None and self.backend is not None

        def serving() -> bool:
            done = self.cli("operator", "cluster", "health", check=False)
            return "SERVING" in done.stdout

        wait_until(serving, "the Temporal frontend", timeout_s, [self.frontend, self.backend])

    def restart_frontend(self, down_s: float = 0.0) -> None:
        """Stop the frontend (SIGTERM), stay down `down_s`, start it again; history and
        matching keep running and keep their state in Postgres."""
        assert self.frontend is not None
        self.frontend.stop()
        time.sleep(down_s)
        self.frontend.start()
        self.wait_serving()

    def stop(self) -> None:
        for proc in (self.frontend, self.backend):
            if proc is not None:
                proc.stop(timeout=20)


class DevTemporal:
    """`temporal server start-dev` (SQLite file, no TLS) in place of the cluster, tuned and
    with the search attributes as `soundfoundry dev` runs it: the same SoundFoundry
    processes on the development server, for comparisons (bench/pipeline.py --topology)."""

    def __init__(self, directory: Path, *, namespace: str = "default") -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.namespace = namespace
        self.port = free_port()
        self.frontend: Proc | None = None
        self.backend: Proc | None = None  # one process does it all

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def client_env(self) -> dict[str, str]:
        return {"TEMPORAL_ADDRESS": self.address, "TEMPORAL_NAMESPACE": self.namespace}

    def start(self) -> None:
        from soundfoundry.devstack import temporal_dev_command

        command = temporal_dev_command(
            temporal_cli_path(),
            port=self.port,
            ui_port=free_port(),
            db_file=self.dir / "temporal.db",
            namespace=self.namespace,
        )
        self.frontend = Proc(
            "temporal-dev-server",
            [*command, "--headless"],
            dict(os.environ),
            self.dir / "temporal-dev.log",
            self.dir,
        ).start()
        wait_until(lambda: _listening(self.port), "the dev server", 60, [self.frontend])

    def stop(self) -> None:
        if self.frontend is not None:
            self.frontend.stop(timeout=20)


# ------------------------------------------------------------------------------------
# The whole topology
# ------------------------------------------------------------------------------------
class Topology(_SyncService):
    """Postgres, S3, a Temporal cluster and SoundFoundry as `apis` APIs and `workers`
    workers. `env` adds settings for the SoundFoundry processes (providers, timings)."""

    def __init__(
        self,
        *,
        apis: int = 2,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        directory: Path | None = None,
        dev_server: bool = False,
    ) -> None:
        self.api_count, self.worker_count = apis, workers
        self.dev_server = dev_server  # Temporal's dev server instead of the cluster
        self.extra_env = dict(env or {})
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="sf-topology-"))
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.app_db_password = secrets.token_hex(16)
        self.temporal_db_password = secrets.token_hex(16)
        self.postgres: PostgresCluster | None = None
        self.s3: VersityGateway | None = None
        self.temporal: TemporalCluster | DevTemporal | None = None
        self.apis: list[Proc] = []
        self.workers: list[Proc] = []
        self.env: dict[str, str] = {}

    # -- lifecycle (start(), stop() and `with` from _SyncService) ---------------------
    def _start(self) -> None:
        self.postgres = PostgresCluster(database="postgres").start()
        self._init_databases()
        self.s3 = VersityGateway().start()
        bucket = self.s3.create_bucket("soundfoundry")
        if self.dev_server:
            self.temporal = DevTemporal(self.dir / "temporal")
        else:
            self.temporal = TemporalCluster(
                self.postgres, self.temporal_db_password, self.dir / "temporal"
            )
        self.temporal.start()
        self.env = self._app_env(bucket)
        _run([str(SOUNDFOUNDRY), "migrate"], what="soundfoundry migrate", env=self.env)
        for _ in range(self.worker_count):
            self.spawn_worker()
        for _ in range(self.api_count):
            self.spawn_api()
        self.wait_ready()

    def stop(self) -> None:
        # SoundFoundry first (it talks to everything), Temporal, then its storage.
        for proc in [*self.apis, *self.workers]:
            with contextlib.suppress(Exception):
                proc.stop(timeout=30)
        for service in (self.temporal, self.s3, self.postgres):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()
        # SF_TOPOLOGY_KEEP=1 keeps the logs (and certificates) for a post-mortem.
        if self._own_dir and not os.environ.get("SF_TOPOLOGY_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- set-up steps ---------------------------------------------------------------
    def _init_databases(self) -> None:
        """deploy/postgres/init.sql, the staging first boot: roles and databases."""
        assert self.postgres is not None
        env = {
            **os.environ,
            "APP_DB_PASSWORD": self.app_db_password,
            "TEMPORAL_DB_PASSWORD": self.temporal_db_password,
        }
        psql = str(postgres_bindir() / "psql")
        _run(
            [
                psql,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.postgres.dsn("postgres"),
                "-f",
                str(INIT_SQL),
            ],
            what="init.sql",
            env=env,
        )

    @property
    def cluster(self) -> TemporalCluster:
        """The Temporal cluster (not the dev server)."""
        assert isinstance(self.temporal, TemporalCluster), "started with dev_server=True"
        return self.temporal

    @property
    def database_url(self) -> str:
        assert self.postgres is not None
        return (
            f"postgresql+asyncpg://soundfoundry:{self.app_db_password}@"
            f"{self.postgres.host}:{self.postgres.port}/soundfoundry"
        )

    def _app_env(self, bucket: str) -> dict[str, str]:
        assert self.s3 is not None and self.temporal is not None
        # Nothing inherited about Temporal, databases or storage: the topology decides.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                (
                    "TEMPORAL_",
                    "DATABASE_",
                    "STORAGE_",
                    "S3_",
                    "MUSIC_",
                    "SYNTH_",
                    "FAL_",
                    "REPLICATE_",
                )
            )
        }
        env.update(
            {
                "ENVIRONMENT": "test",
                "LOG_LEVEL": "INFO",
                "DATABASE_URL": self.database_url,
                "STORAGE_BACKEND": "s3",
                "S3_ENDPOINT": self.s3.endpoint,
                "S3_ACCESS_KEY": self.s3.access_key,
                "S3_SECRET_KEY": self.s3.secret_key,
                "S3_BUCKET": bucket,
                "S3_REGION": self.s3.region,
                "SECRET_KEY": secrets.token_hex(24),
                "SEARCH_ATTRIBUTES_ENABLED": "true",
                **self.temporal.client_env(),
            }
        )
        env.update(self.extra_env)
        return env

    # -- SoundFoundry processes ------------------------------------------------------
    def spawn_worker(self) -> Proc:
        index = len(self.workers)
        env = {**self.env, "WORKER_METRICS_PORT": str(free_port())}
        proc = Proc(
            f"worker-{index}",
            [str(SOUNDFOUNDRY), "worker"],
            env,
            self.dir / f"worker-{index}.log",
            self.dir,
        ).start()
        self.workers.append(proc)
        return proc

    def spawn_api(self) -> Proc:
        index, port = len(self.apis), free_port()
        env = {**self.env, "PUBLIC_BASE_URL": f"http://{LOOPBACK}:{port}"}
        proc = Proc(
            f"api-{index}",
            [str(SOUNDFOUNDRY), "api", "--port", str(port)],
            env,
            self.dir / f"api-{index}.log",
            self.dir,
            port=port,
        )
        self.apis.append(proc.start())
        return proc

    @property
    def api_urls(self) -> list[str]:
        return [f"http://{LOOPBACK}:{proc.port}" for proc in self.apis]

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Every API ready and every worker polling."""
        for proc, url in zip(self.apis, self.api_urls, strict=True):
            ready = functools.partial(_answers_ready, f"{url}/api/health/ready")
            wait_until(ready, f"{proc.name} ready", timeout_s, [proc])
        for proc in self.workers:
            polling = functools.partial(_logged, proc, "worker ready")
            wait_until(polling, f"{proc.name} ready", timeout_s, [proc])

    def restore(self) -> None:
        """Start again every API and worker that is not running (same port, same
        settings), then wait until all are ready."""
        for proc in [*self.apis, *self.workers]:
            if not proc.alive():
                proc.start()
        self.wait_ready()

    def kill_worker(self, index: int) -> None:
        self.workers[index].kill()

    def kill_api(self, index: int) -> None:
        self.apis[index].kill()

    def describe(self) -> Iterator[str]:
        """Where everything is, for a person."""
        assert self.postgres is not None and self.s3 is not None and self.temporal is not None
        t = self.temporal
        pg = f"{self.postgres.host}:{self.postgres.port}"
        yield f"PostgreSQL      {pg}  (databases soundfoundry, temporal, temporal_visibility)"
        yield f"S3 (versitygw)  {self.s3.endpoint}  bucket {self.env['S3_BUCKET']}"
        front = t.frontend.pid if t.frontend else "-"
        if isinstance(t, DevTemporal):
            yield f"Temporal        dev server {t.address} (pid {front})"
        else:
            back = t.backend.pid if t.backend else "-"
            yield f"Temporal        frontend {t.address} (mTLS, pid {front})"
            yield f"                history+matching+worker (pid {back})"
        for proc, url in zip(self.apis, self.api_urls, strict=True):
            yield f"API             {url}  (pid {proc.pid})"
        for proc in self.workers:
            yield f"worker          pid {proc.pid}  metrics http://{LOOPBACK}:{proc.env['WORKER_METRICS_PORT']}/metrics"
        yield f"logs, certs     {self.dir}"


# ------------------------------------------------------------------------------------
# scripts/production-local: the same topology, for a person
# ------------------------------------------------------------------------------------
# Provider settings a person may bring; the tests set their own.
PERSON_PASS_THROUGH = ("MUSIC_PROVIDERS", "MUSIC_PROVIDER", "FAL_KEY", "REPLICATE_API_TOKEN")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="scripts/production-local",
        description="Start SoundFoundry's production topology on this machine; Ctrl-C stops "
        "it and removes everything it made.",
    )
    parser.add_argument("--apis", type=int, default=2, help="API processes (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args(argv)
    if args.apis < 1 or args.workers < 1:
        parser.error("need at least one API and one worker")
    env = {name: os.environ[name] for name in PERSON_PASS_THROUGH if os.environ.get(name)}
    env.setdefault("MUSIC_PROVIDERS", "synth")  # no key, no cost: the local synthesizer
    stopping: list[int] = []

    def stop_on(signum: int, _frame: object) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop_on)
    print(
        "starting: PostgreSQL, versitygw, temporal-server (frontend; history+matching+worker), "
        f"{args.apis} API and {args.workers} worker processes ...",
        flush=True,
    )
    topology = Topology(apis=args.apis, workers=args.workers, env=env)
    try:
        topology.start()
        token = (
            _run(
                [
                    str(SOUNDFOUNDRY),
                    "users",
                    "create",
                    "--name",
                    "you",
                    "--plan",
                    "pro",
                    "--credits",
                    "1000",
                ],
                what="soundfoundry users create",
                env=topology.env,
            )
            .strip()
            .splitlines()[-1]
        )
        print("\nrunning:\n" + "\n".join(f"  {line}" for line in topology.describe()))
        print("\nyour API token (user 'you', 1000 credits):\n  " + token)
        print(
            f"\ntry:\n  curl -s -X POST {topology.api_urls[0]}/api/tracks "
            f"-H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
            '-d \'{"prompt": "warm ambient pad", "duration_s": 10}\''
        )
        print("\nthe temporal CLI, as an operator (client certificate included):")
        for name, value in topology.cluster.client_env(topology.cluster.operator).items():
            print(f"  export {name}={shlex.quote(value)}")
        print("  .venv/bin/temporal workflow list")
        print("\nCtrl-C stops everything.", flush=True)
        while True:
            for proc in [
                topology.cluster.frontend,
                topology.cluster.backend,
                *topology.apis,
                *topology.workers,
            ]:
                if proc is not None and not proc.alive():
                    print(f"\n{proc.name} exited; its log:\n{proc.tail()}", file=sys.stderr)
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        print("\nstopping ...", flush=True)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup
        topology.stop()
        print("stopped; nothing left behind.")


if __name__ == "__main__":
    sys.exit(main())
