"""Session-wide pytest fixtures for the real services in :mod:`tests.services`.

Use them from a test module by importing the fixture names, or register this module
once for the whole suite with ``pytest_plugins = ["tests.fixtures_services"]`` in the
top-level ``tests/conftest.py``.

    pg_cluster       PostgresCluster, started once per session
    pg_database_url  a fresh empty database per test (postgresql+asyncpg:// URL)
    s3_gateway       VersityGateway, started once per session
    s3_bucket        a fresh empty bucket per test (its name)
    temporal_server  TemporalDevServer, started once per session (session event loop)
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from soundfoundry.devstack import DEV_SERVER_TUNING
from tests.services import (
    SOUNDFOUNDRY_SEARCH_ATTRIBUTES,
    PostgresCluster,
    TemporalDevServer,
    VersityGateway,
)

__all__ = ["pg_cluster", "pg_database_url", "s3_bucket", "s3_gateway", "temporal_server"]


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


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_server() -> AsyncIterator[TemporalDevServer]:
    # Tuned as `soundfoundry dev` runs it: tests wait on tasks, not on the queues' pacing.
    async with TemporalDevServer(
        search_attributes=SOUNDFOUNDRY_SEARCH_ATTRIBUTES, extra_args=DEV_SERVER_TUNING
    ) as server:
        yield server
