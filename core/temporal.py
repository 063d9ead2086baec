"""The one way to reach Temporal: the client factory used by the API, the worker and the
CLI, and the registration of the search attributes track workflows carry.

Every client speaks pydantic (`core.contracts` types) and carries the tracing interceptor,
so a workflow started by the API joins the request's trace and the worker continues it.

A plain `temporal server start-dev` (README: running the parts separately) knows none of
them, and a start that sets an unknown attribute fails. Every worker registers the
missing ones at start-up; registering is idempotent, so many workers may race to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client, Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import SEARCH_ATTRIBUTES
from core.settings import Settings

SEARCH_ATTRIBUTE_NAMES = tuple(key.name for key in SEARCH_ATTRIBUTES)
KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def connect(
    address: str,
    namespace: str,
    *,
    interceptors: Sequence[Interceptor] = (),
    runtime: Runtime | None = None,
) -> Client:
    """A client for `namespace`; extra interceptors run inside the tracing one."""
    return await Client.connect(
        address,
        namespace=namespace,
        data_converter=pydantic_data_converter,
        interceptors=[TracingInterceptor(), *interceptors],
        runtime=runtime,
    )


async def client_for(
    settings: Settings,
    *,
    interceptors: Sequence[Interceptor] = (),
    runtime: Runtime | None = None,
) -> Client:
    """A client for the configured Temporal address and namespace."""
    return await connect(
        settings.temporal_address,
        settings.temporal_namespace,
        interceptors=interceptors,
        runtime=runtime,
    )


async def missing_search_attributes(client: Client, namespace: str) -> list[str]:
    registered = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return [
        name for name in SEARCH_ATTRIBUTE_NAMES if registered.custom_attributes.get(name) != KEYWORD
    ]


async def register_search_attributes(client: Client, namespace: str) -> list[str]:
    """Add the missing attributes as Keyword; returns the names this call added."""
    missing = await missing_search_attributes(client, namespace)
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace, search_attributes=dict.fromkeys(missing, KEYWORD)
            )
        )
    except RPCError as exc:
        # Another worker registered them first.
        if exc.status is not RPCStatusCode.ALREADY_EXISTS:
            raise
    return missing
