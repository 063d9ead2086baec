"""Search attributes on a namespace where our identity may not register them, and readiness
that means a create will succeed: against a real temporal-server (SQL visibility, JWT
authorization, default dynamic config: its namespace cache lags as in production)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from api.main import create_app
from api.temporal import TemporalGateway
from core.contracts import SEARCH_ATTRIBUTES
from core.db import create_engine, session_factory
from core.migrate import upgrade
from core.temporal import (
    KEYWORD,
    SEARCH_ATTRIBUTE_NAMES,
    SearchAttributesMissing,
    client_for,
    ensure_search_attributes,
    missing_search_attributes,
)
from domain.users import create_user
from tests.conftest import eventually
from tests.core.test_temporal_connect import (
    SOUNDFOUNDRY,
    new_namespace,
    secure,
    settings_for,
    temporal_line,
)
from tests.services import temporal_cli_path
from tests.tls_server import SecureTemporal
from worker import connect_ready

__all__ = ["secure"]


def _command(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    clean.update(env, WORKER_METRICS_PORT="0")
    return subprocess.run(
        list(args), env=clean, cwd=cwd, capture_output=True, text=True, timeout=180, check=False
    )


async def _start_with_attributes(client: Client) -> None:
    """What the API's create does to Temporal: a start carrying every attribute (on a queue
    nobody polls, closed by its timeout)."""
    await client.start_workflow(
        "TrackWorkflow",
        id=f"readiness-{uuid.uuid4().hex}",
        task_queue="nobody-polls-this",
        execution_timeout=timedelta(seconds=1),
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(key, "x") for key in SEARCH_ATTRIBUTES]
        ),
    )


async def test_without_operator_rights_the_worker_names_the_command_and_the_api_says_so(
    secure: SecureTemporal, tmp_path: Path
) -> None:
    namespace = await new_namespace(secure)
    writer = secure.client_env(permissions=[f"{namespace}:write"], TEMPORAL_NAMESPACE=namespace)
    settings = settings_for(writer)

    # The worker refuses to start, with the exact command (and nothing else on its last line).
    worker = await asyncio.to_thread(_command, writer, str(SOUNDFOUNDRY), "worker", cwd=tmp_path)
    assert worker.returncode != 0
    assert "Traceback" not in worker.stderr
    last = worker.stderr.strip().splitlines()[-1]
    assert last.startswith("refusing to start: search attributes TrackId, UserId, Provider,")
    command = re.search(r"runs: (temporal operator search-attribute create [^(]+?) \(", last)
    assert command, last
    assert command.group(1) == (
        f"temporal operator search-attribute create --namespace {namespace}"
        " --name TrackId --type Keyword --name UserId --type Keyword"
        " --name Provider --type Keyword --name JobStatus --type Keyword"
    )

    # The API refuses a create with a 503 that says why, before charging anything.
    database = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    await asyncio.to_thread(upgrade, database)
    engine = create_engine(database)
    _, token = await create_user(session_factory(engine), "writer", 10)
    await engine.dispose()
    api_settings = settings.model_copy(
        update={"database_url": database, "storage_local_dir": tmp_path / "objects"}
    )
    app = create_app(api_settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {token}"},
        ) as http,
    ):
        created = await http.post("/api/tracks", json={"prompt": "Warm pad", "duration_s": 5})
        assert created.status_code == 503, created.text
        assert command.group(1) in created.json()["detail"]
        assert created.headers["Retry-After"]
        assert (await http.get("/api/me")).json()["credits"] == 10
        ready = await http.get("/api/health/ready")
        assert ready.status_code == 503 and "search attribute" in ready.json()["checks"]["temporal"]

        # An operator runs that command with the real CLI and an admin's credentials...
        admin = secure.client_env(TEMPORAL_NAMESPACE=namespace)
        cli = await asyncio.to_thread(
            _command, admin, str(temporal_cli_path()), *shlex.split(command.group(1))[1:]
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr

        # ...and then the same identity starts (registering nothing) and creates succeed.
        client = await connect_ready(settings, None)
        assert (await ensure_search_attributes(client, namespace)).added == []

        async def created_ok() -> bool:
            answer = await http.post("/api/tracks", json={"prompt": "Warm pad", "duration_s": 5})
            return answer.status_code == 201

        await eventually(created_ok, what="a create after the operator's command")


async def test_without_rights_ensure_raises_missing_with_the_names(secure: SecureTemporal) -> None:
    namespace = await new_namespace(secure)
    writer = secure.client_env(permissions=[f"{namespace}:write"], TEMPORAL_NAMESPACE=namespace)
    client = await client_for(settings_for(writer))
    try:
        await ensure_search_attributes(client, namespace)
    except SearchAttributesMissing as exc:
        assert exc.names == list(SEARCH_ATTRIBUTE_NAMES)
    else:
        raise AssertionError("a writer registered search attributes")


async def test_ready_means_a_create_succeeds_right_after_registration(
    secure: SecureTemporal,
) -> None:
    """Registered a moment ago, the attributes are listed but starts carrying them fail
    ("no mapping defined") until the server's namespace cache refreshes. The old readiness
    (listed = ready) said OK in that window; every OK must now mean a start succeeds."""
    namespace = await new_namespace(secure)
    settings = settings_for(secure.client_env(TEMPORAL_NAMESPACE=namespace))
    client = await client_for(settings)
    gateway = TemporalGateway(settings)
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace, search_attributes=dict.fromkeys(SEARCH_ATTRIBUTE_NAMES, KEYWORD)
        )
    )
    assert await missing_search_attributes(client, namespace) == []
    not_ready: list[str] = []
    for _ in range(120):
        doctor = await temporal_line(settings)
        problem = await gateway.problem()
        if problem is None:
            assert doctor.endswith("search attributes registered and usable"), doctor
            await _start_with_attributes(client)  # raises if readiness lied
            break
        assert "no mapping defined for search attribute" in problem, problem
        not_ready.append(doctor)
        await asyncio.sleep(0.25)
    else:
        raise AssertionError("never ready")
    # The lag was there, and doctor said so rather than OK.
    assert not_ready and "does not accept our search attributes" in not_ready[0], not_ready


async def test_worker_ready_means_a_create_succeeds(secure: SecureTemporal) -> None:
    """The worker registers the attributes itself; when its start-up returns ('worker
    ready'), a start carrying them succeeds at once."""
    namespace = await new_namespace(secure)
    settings = settings_for(secure.client_env(TEMPORAL_NAMESPACE=namespace))
    client = await connect_ready(settings, None)
    await _start_with_attributes(client)


async def test_temporal_setup_registers_reports_and_is_idempotent(
    secure: SecureTemporal, tmp_path: Path
) -> None:
    namespace = await new_namespace(secure, retention_days=1)
    admin = secure.client_env(TEMPORAL_NAMESPACE=namespace)
    first = await asyncio.to_thread(
        _command, admin, str(SOUNDFOUNDRY), "temporal", "setup", cwd=tmp_path
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "added     search attributes TrackId, UserId, Provider, JobStatus" in first.stdout
    assert "retention 1 days is shorter than the 3 days" in first.stdout
    assert "changed: 4 added" in first.stdout
    second = await asyncio.to_thread(
        _command, admin, str(SOUNDFOUNDRY), "temporal", "setup", cwd=tmp_path
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "unchanged search attributes TrackId, UserId, Provider, JobStatus" in second.stdout
    assert "nothing to change" in second.stdout
    # Without operator rights it changes nothing and names the command.
    fresh = await new_namespace(secure)
    writer = secure.client_env(permissions=[f"{fresh}:write"], TEMPORAL_NAMESPACE=fresh)
    refused = await asyncio.to_thread(
        _command, writer, str(SOUNDFOUNDRY), "temporal", "setup", cwd=tmp_path
    )
    assert refused.returncode == 1
    assert f"temporal operator search-attribute create --namespace {fresh}" in refused.stderr
