"""The test services are real: a PostgreSQL server, an authenticating S3 and Temporal."""

# The session fixtures are imported from tests.fixtures_services; pytest injects them by
# parameter name, which ruff reads as redefining the imported names.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import os
import pathlib
import tempfile
import uuid
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from temporalio import workflow
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest, ListNamespacesRequest
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.worker import Worker

from tests.fixtures_services import (  # noqa: F401  (pytest fixtures)
    pg_cluster,
    pg_database_url,
    s3_bucket,
    s3_gateway,
    temporal_server,
)
from tests.services import (
    SOUNDFOUNDRY_SEARCH_ATTRIBUTES,
    PostgresCluster,
    ServiceError,
    TemporalDevServer,
    VersityGateway,
    temporal_cli_path,
)

# --- PostgreSQL ------------------------------------------------------------------------


async def test_postgres_answers_over_tcp(pg_cluster: PostgresCluster) -> None:
    conn = await asyncpg.connect(pg_cluster.sync_url)
    try:
        version = await conn.fetchval("select version()")
        database = await conn.fetchval("select current_database()")
    finally:
        await conn.close()
    assert version.startswith("PostgreSQL ")
    assert database == pg_cluster.database
    assert pg_cluster.async_url.startswith("postgresql+asyncpg://postgres:")


async def test_postgres_checks_passwords(pg_cluster: PostgresCluster) -> None:
    wrong = pg_cluster.sync_url.replace(pg_cluster.password, "not-the-password")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong)


async def test_fresh_database_works_with_sqlalchemy(pg_database_url: str) -> None:
    engine = create_async_engine(pg_database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("create table t (id int primary key, name text)"))
            await conn.execute(text("insert into t values (1, 'ok')"))
            assert (await conn.execute(text("select name from t"))).scalar_one() == "ok"
            name = (await conn.execute(text("select current_database()"))).scalar_one()
    finally:
        await engine.dispose()
    assert pg_database_url.endswith("/" + name)


# --- S3 (versitygw) --------------------------------------------------------------------


def _s3(gateway: VersityGateway):  # type: ignore[no-untyped-def]
    return get_session().create_client(
        "s3",
        config=AioConfig(signature_version="s3v4", s3={"addressing_style": "path"}),
        **gateway.client_kwargs(),
    )


def _tamper_signature(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tampered = []
    for key, value in query:
        if key == "X-Amz-Signature":
            value = value[:-1] + ("0" if value[-1] != "0" else "1")
        tampered.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(tampered)))


async def test_presigned_urls_are_really_checked(
    s3_gateway: VersityGateway, s3_bucket: str
) -> None:
    body = os.urandom(256 * 1024)
    key = "tracks/demo/audio.wav"
    async with _s3(s3_gateway) as s3:
        await s3.put_object(Bucket=s3_bucket, Key=key, Body=body, ContentType="audio/wav")
        head = await s3.head_object(Bucket=s3_bucket, Key=key)
        assert head["ContentLength"] == len(body)
        params = {"Bucket": s3_bucket, "Key": key}
        url = await s3.generate_presigned_url("get_object", Params=params, ExpiresIn=300)
        short_url = await s3.generate_presigned_url("get_object", Params=params, ExpiresIn=1)

    async with httpx.AsyncClient(timeout=10) as http:
        ok = await http.get(url)
        assert ok.status_code == 200
        assert ok.content == body
        assert ok.headers["content-type"] == "audio/wav"

        assert (await http.get(_tamper_signature(url))).status_code == 403
        unsigned = url.split("?", 1)[0]
        assert (await http.get(unsigned)).status_code == 403

        await asyncio.sleep(2.5)
        assert (await http.get(short_url)).status_code == 403
        assert (await http.get(url)).status_code == 200


async def test_s3_rejects_wrong_secret(s3_gateway: VersityGateway, s3_bucket: str) -> None:
    impostor = VersityGateway()  # never started: only its fresh secret key is used
    impostor.port = s3_gateway.port
    impostor.access_key = s3_gateway.access_key
    async with _s3(impostor) as s3:
        with pytest.raises(ClientError) as caught:
            await s3.put_object(Bucket=s3_bucket, Key="x", Body=b"x")
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# --- Temporal --------------------------------------------------------------------------


class EchoIn(BaseModel):
    track_id: str
    requested_at: datetime


class EchoOut(BaseModel):
    track_id: str
    requested_at: datetime
    status: str


JOB_STATUS = SearchAttributeKey.for_keyword("JobStatus")
TRACK_ID = SearchAttributeKey.for_keyword("TrackId")


@workflow.defn(sandboxed=False)
class EchoWorkflow:
    @workflow.run
    async def run(self, request: EchoIn) -> EchoOut:
        workflow.upsert_search_attributes([JOB_STATUS.value_set("done")])
        return EchoOut(track_id=request.track_id, requested_at=request.requested_at, status="done")


async def test_temporal_dev_server_is_up(temporal_server: TemporalDevServer) -> None:
    client = temporal_server.client
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert info.server_version
    namespaces = await client.workflow_service.list_namespaces(ListNamespacesRequest())
    assert "default" in {ns.namespace_info.name for ns in namespaces.namespaces}
    assert temporal_server.target_host == f"127.0.0.1:{temporal_server.port}"

    assert temporal_server.ui_url is not None
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(temporal_server.ui_url)).status_code == 200


async def test_temporal_search_attributes_registered(temporal_server: TemporalDevServer) -> None:
    response = await temporal_server.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=temporal_server.namespace)
    )
    registered = dict(response.custom_attributes)
    for key in SOUNDFOUNDRY_SEARCH_ATTRIBUTES:
        assert registered.get(key.name) == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD, key.name


async def test_temporal_runs_workflows_with_pydantic_and_search(
    temporal_server: TemporalDevServer,
) -> None:
    client = temporal_server.client
    track_id = uuid.uuid4().hex
    request = EchoIn(track_id=track_id, requested_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    task_queue = f"services-{track_id}"
    async with Worker(client, task_queue=task_queue, workflows=[EchoWorkflow]):
        result = await client.execute_workflow(
            EchoWorkflow.run,
            request,
            id=f"echo-{track_id}",
            task_queue=task_queue,
            search_attributes=TypedSearchAttributes([SearchAttributePair(TRACK_ID, track_id)]),
        )
    assert result == EchoOut(track_id=track_id, requested_at=request.requested_at, status="done")

    query = f'TrackId = "{track_id}" AND JobStatus = "done"'
    for _ in range(50):
        found = [wf.id async for wf in client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.2)
    assert found == [f"echo-{track_id}"]


def test_temporal_cli_path_never_downloads(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert temporal_cli_path().is_file()
    monkeypatch.setenv("TEMPORAL_CLI", str(tmp_path_factory.mktemp("none") / "temporal"))
    with pytest.raises(ServiceError, match="TEMPORAL_CLI"):
        temporal_cli_path()


def test_failed_starts_leave_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    work, fakes = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    fakes.mkdir()
    for name in ("initdb", "pg_ctl", "versitygw"):
        fake = fakes / name
        fake.write_text("#!/bin/sh\necho broken-on-purpose\nexit 1\n")
        fake.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    monkeypatch.setenv("PG_BINDIR", str(fakes))
    monkeypatch.setenv("VERSITYGW", str(fakes / "versitygw"))

    with pytest.raises(ServiceError), PostgresCluster():
        pass
    with pytest.raises(ServiceError, match="broken-on-purpose"), VersityGateway(start_timeout=5):
        pass
    assert list(work.iterdir()) == []
