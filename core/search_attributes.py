"""The custom search attributes track workflows carry, registered on the namespace.

A plain `temporal server start-dev` (README: running the parts separately) knows none of
them, and a start that sets an unknown attribute fails. Every worker registers the
missing ones at start-up; registering is idempotent, so many workers may race to it.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

SEARCH_ATTRIBUTES = ("TrackId", "UserId", "Provider", "JobStatus")
KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def missing_search_attributes(client: Client, namespace: str) -> list[str]:
    registered = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return [name for name in SEARCH_ATTRIBUTES if registered.custom_attributes.get(name) != KEYWORD]


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
