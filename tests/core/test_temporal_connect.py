"""Connecting to a secured Temporal the way the Temporal CLI does (TEMPORAL_* variables and
temporal.toml profiles), and one plain sentence for each way it goes wrong: against a real
temporal-server with mTLS on its frontend and JWT authorization (tests/tls_server.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

from core.logging import SecretScrubber
from core.settings import Settings
from core.temporal import client_for, describe_namespace, temporal_connection
from core.temporal_config import load_connection
from core.temporal_errors import TemporalUnavailable
from soundfoundry.devstack import dev_environment
from soundfoundry.doctor import check_temporal
from tests.services import free_port
from tests.tls_server import SecureTemporal

SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureTemporal]:
    with SecureTemporal(tmp_path_factory.mktemp("secure-temporal"), authorization=True) as server:
        yield server


def settings_for(env: dict[str, str]) -> Settings:
    """Settings from exactly these variables (as fields: no .env, no process environment)."""
    return Settings.model_validate({key.lower(): value for key, value in env.items()})


async def temporal_line(settings: Settings) -> str:
    """What `soundfoundry doctor` prints for Temporal."""
    try:
        return (await check_temporal(settings)).detail
    except TemporalUnavailable as exc:
        return str(exc)


async def new_namespace(secure: SecureTemporal, retention_days: float = 3) -> str:
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    admin = await client_for(settings_for(secure.client_env()))
    await admin.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace,
            workflow_execution_retention_period=Duration(seconds=int(retention_days * 86400)),
        )
    )
    settings = settings_for(secure.client_env(TEMPORAL_NAMESPACE=namespace))
    client = await client_for(settings)
    for _ in range(60):  # the namespace cache learns of it within seconds
        try:
            await describe_namespace(client, temporal_connection(settings))
            return namespace
        except TemporalUnavailable:
            await asyncio.sleep(0.5)
    raise AssertionError(f"namespace {namespace} never became visible")


async def test_connects_with_mtls_and_api_key_from_the_variables(secure: SecureTemporal) -> None:
    settings = settings_for(secure.client_env())
    client = await client_for(settings)
    await describe_namespace(client, temporal_connection(settings))
    assert temporal_connection(settings).describe() == (
        f"{secure.address}, namespace default (mTLS + API key)"
    )


async def test_a_temporal_toml_profile_serves_like_the_cli(
    secure: SecureTemporal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = secure.client_env()
    (tmp_path / "temporal.toml").write_text(
        '[profile.default]\naddress = "localhost:1"\n\n'
        f'[profile.prod]\naddress = "{secure.address}"\nnamespace = "default"\n'
        f'api_key = "{env["TEMPORAL_API_KEY"]}"\n'
        f'[profile.prod.tls]\nserver_ca_cert_path = "{env["TEMPORAL_TLS_SERVER_CA_CERT_PATH"]}"\n'
        f'client_cert_path = "{env["TEMPORAL_TLS_CLIENT_CERT_PATH"]}"\n'
        f'client_key_path = "{env["TEMPORAL_TLS_CLIENT_KEY_PATH"]}"\n'
    )
    for name in list(os.environ):
        if name.startswith("TEMPORAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "temporal.toml"))
    monkeypatch.setenv("TEMPORAL_PROFILE", "prod")
    settings = Settings(_env_file=None)
    # Readers of the two fields (UI links, the dev stack) see the profile's target.
    assert settings.temporal_address == secure.address
    await describe_namespace(await client_for(settings), temporal_connection(settings))
    # The key read from the profile's file is scrubbed from logs like any secret.
    key_text = (await asyncio.to_thread(secure.client_pem.key.read_text)).strip()
    scrub = SecretScrubber(settings.secret_values()).scrub_text
    assert scrub(f"x {env['TEMPORAL_API_KEY']} {key_text} y") == "x [redacted] [redacted] y"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("plaintext", "most likely requires TLS; set TEMPORAL_TLS=true"),
        ("no client certificate", "requires a client certificate: set TEMPORAL_TLS_CLIENT_CERT"),
        ("client certificate of another CA", "rejected our client certificate"),
        ("no server CA", "not signed by a CA we trust: set TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
        ("wrong server CA", "not signed by a CA we trust: set TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
        ("wrong server name", "not issued for that host name: set TEMPORAL_TLS_SERVER_NAME"),
        ("bad API key", "rejected our API key (TEMPORAL_API_KEY)"),
        ("no rights on the namespace", "refused access to namespace default"),
        ("unknown namespace", "namespace nope does not exist on Temporal at"),
        ("key file missing", "TEMPORAL_TLS_CLIENT_KEY_PATH: cannot read"),
        ("certificate without key", "set both TEMPORAL_TLS_CLIENT_CERT_PATH and"),
    ],
)
async def test_each_wrong_setting_gets_one_plain_sentence(
    secure: SecureTemporal, case: str, expected: str
) -> None:
    good = secure.client_env()
    env = {
        "plaintext": {"TEMPORAL_ADDRESS": secure.address, "TEMPORAL_NAMESPACE": "default"},
        "no client certificate": {
            **good,
            "TEMPORAL_TLS_CLIENT_CERT_PATH": "",
            "TEMPORAL_TLS_CLIENT_KEY_PATH": "",
        },
        "client certificate of another CA": {
            **good,
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(secure.stranger_pem.cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(secure.stranger_pem.key),
        },
        "no server CA": {**good, "TEMPORAL_TLS_SERVER_CA_CERT_PATH": ""},
        "wrong server CA": {**good, "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(secure.other_ca.cert)},
        "wrong server name": {**good, "TEMPORAL_TLS_SERVER_NAME": "temporal.example.com"},
        "bad API key": {**good, "TEMPORAL_API_KEY": "not-a-token-at-all-" + "x" * 20},
        "no rights on the namespace": secure.client_env(permissions=["elsewhere:write"]),
        "unknown namespace": {**good, "TEMPORAL_NAMESPACE": "nope"},
        "key file missing": {**good, "TEMPORAL_TLS_CLIENT_KEY_PATH": "/nonexistent/client.key"},
        "certificate without key": {**good, "TEMPORAL_TLS_CLIENT_KEY_PATH": ""},
    }[case]
    settings = settings_for({k: v for k, v in env.items() if v})
    line = await temporal_line(settings)
    assert expected in line, line
    assert "\n" not in line and "tonic" not in line and "Status {" not in line, line
    for secret in settings.secret_values():
        assert secret not in line


def _run(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    clean.update(env, WORKER_METRICS_PORT="0", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [str(SOUNDFOUNDRY), command], env=clean, cwd=cwd, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


async def test_doctor_and_worker_say_a_tls_only_server_needs_tls_in_one_line(
    secure: SecureTemporal, tmp_path: Path
) -> None:
    env = {"TEMPORAL_ADDRESS": secure.address}
    doctor, worker = await asyncio.gather(
        asyncio.to_thread(_run, "doctor", env, tmp_path),
        asyncio.to_thread(_run, "worker", env, tmp_path),
    )
    temporal = [line for line in doctor.stdout.splitlines() if "temporal" in line.split()[1:2]]
    assert len(temporal) == 1 and "requires TLS" in temporal[0], doctor.stdout
    assert worker.returncode != 0
    assert "Traceback" not in worker.stderr, worker.stderr
    assert worker.stderr.strip().splitlines()[-1].startswith("refusing to start: Temporal at")


def _spawn_api(temporal: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env.update(temporal, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [str(SOUNDFOUNDRY), "api", "--port", str(free_port())],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def test_the_api_says_at_start_up_in_one_line_why_tracks_cannot_start(
    secure: SecureTemporal, tmp_path: Path
) -> None:
    """The API serves anyway (readiness keeps it out of rotation); its log says why."""
    api = _spawn_api({"TEMPORAL_ADDRESS": secure.address}, tmp_path)
    assert api.stdout is not None
    stdout = api.stdout

    def not_ready_line() -> dict[str, str]:
        for line in stdout:
            if b"temporal not ready" in line:
                record: dict[str, str] = json.loads(line)
                return record
        raise AssertionError("the API exited without saying")

    try:
        record = await asyncio.wait_for(asyncio.to_thread(not_ready_line), 60)
    finally:
        api.terminate()
        api.wait(timeout=30)
    assert "most likely requires TLS" in record["reason"], record
    assert "\n" not in record["reason"] and "exception" not in record


async def test_worker_start_up_with_a_bad_api_key_never_prints_it(
    secure: SecureTemporal, tmp_path: Path
) -> None:
    key = "sk-" + uuid.uuid4().hex
    worker = await asyncio.to_thread(
        _run, "worker", secure.client_env(TEMPORAL_API_KEY=key), tmp_path
    )
    assert worker.returncode != 0
    assert "rejected our API key" in worker.stderr, worker.stderr
    assert key not in worker.stderr + worker.stdout
    assert "Traceback" not in worker.stderr


@pytest.mark.unit
def test_precedence_settings_then_environment_then_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("TEMPORAL_"):
            monkeypatch.delenv(name)
    (tmp_path / "temporal.toml").write_text(
        '[profile.default]\naddress = "profile-host:7233"\nnamespace = "from-profile"\n'
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "temporal.toml"))
    assert temporal_connection(Settings(_env_file=None)).describe() == (
        "profile-host:7233, namespace from-profile (plaintext)"
    )
    monkeypatch.setenv("TEMPORAL_ADDRESS", "env-host:7233")
    settings = Settings(_env_file=None)
    assert (settings.temporal_address, settings.temporal_namespace) == (
        "env-host:7233",
        "from-profile",
    )
    explicit = Settings(_env_file=None, temporal_namespace="given")
    assert temporal_connection(explicit).namespace == "given"


@pytest.mark.unit
def test_the_dev_stack_keeps_a_shells_cloud_settings_away_from_its_own_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    monkeypatch.setenv("TEMPORAL_API_KEY", "cloud-key-" + "x" * 20)
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", "/somewhere/cert.pem")
    monkeypatch.setenv("TEMPORAL_PROFILE", "cloud")
    env = dev_environment(8000, 17233, 8233)
    connection = load_connection({k: v for k, v in env.items() if k.startswith("TEMPORAL_")})
    assert connection.describe() == "127.0.0.1:17233, namespace default (plaintext)"
