"""Session-wide pytest fixtures for the real services in :mod:`tests.services`.

Use them from a test module by importing the fixture names, or register this module
once for the whole suite with ``pytest_plugins = ["tests.fixtures_services"]`` in the
top-level ``tests/conftest.py``.

    pg_cluster       PostgresCluster, started once per session
    pg_database_url  a fresh empty database per test (postgresql+asyncpg:// URL)
    s3_gateway       VersityGateway, started once per session
    s3_bucket        a fresh empty bucket per test (its name)
    s3               an open S3Storage on that bucket
    temporal_server  TemporalDevServer, started once per session (session event loop)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from core.s3_storage import S3Storage
from soundfoundry.devstack import DEV_SERVER_TUNING
from tests.services import (
    SOUNDFOUNDRY_SEARCH_ATTRIBUTES,
    PostgresCluster,
    TemporalDevServer,
    VersityGateway,
)

__all__ = ["pg_cluster", "pg_database_url", "s3", "s3_bucket", "s3_gateway", "temporal_server"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def pg_database_url(pg_cluster: PostgresCluster) -> str:
    return pg_cluster.create_database(f"test_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def s3_gateway() -> Iterator[VersityGateway]:
    with VersityGateway() as gateway:
        yield gateway


@pytest.fixture
def s3_bucket(s3_gateway: VersityGateway) -> str:
    return s3_gateway.create_bucket(f"sf-test-{uuid.uuid4().hex[:16]}")


@pytest_asyncio.fixture
async def s3(s3_gateway: VersityGateway, s3_bucket: str) -> AsyncIterator[S3Storage]:
    storage = S3Storage(
        bucket=s3_bucket,
        endpoint=s3_gateway.endpoint,
        access_key=s3_gateway.access_key,
        secret_key=s3_gateway.secret_key,
        region=s3_gateway.region,
    )
    async with storage:
        yield storage


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_server() -> AsyncIterator[TemporalDevServer]:
    # Tuned as `soundfoundry dev` runs it: tests wait on tasks, not on the queues' pacing.
    async with TemporalDevServer(
        search_attributes=SOUNDFOUNDRY_SEARCH_ATTRIBUTES, extra_args=DEV_SERVER_TUNING
    ) as server:
        yield server
