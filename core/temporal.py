"""The one way to reach Temporal: the client factory used by the API, the worker and the
CLI, the namespace check, and the search attributes track workflows carry.

Every client speaks pydantic (`core.contracts` types) and carries the tracing interceptor,
so a workflow started by the API joins the request's trace and the worker continues it.
Where and how to connect comes from the SDK's environment configuration
(core/temporal_config.py); every failure to connect or to use the namespace is raised as
`TemporalUnavailable` with one sentence (core/temporal_errors.py).

A plain `temporal server start-dev` (README: running the parts separately) knows none of
the search attributes, and a start that sets an unknown attribute fails. Every worker
registers the missing ones at start-up where its identity may (registering is idempotent,
so many workers may race to it); where it may not (Temporal Cloud, a cluster with an
authorizer), an operator adds them once: `soundfoundry temporal setup` or the command
`SearchAttributesMissing` names.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.duration_pb2 import Duration
from temporalio.api.common.v1 import WorkflowType
from temporalio.api.enums.v1 import (
    IndexedValueType,
    WorkflowIdConflictPolicy,
    WorkflowIdReusePolicy,
)
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    DescribeNamespaceResponse,
    StartWorkflowExecutionRequest,
)
from temporalio.client import Client, Interceptor
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import encode_search_attributes
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from core.contracts import SEARCH_ATTRIBUTES
from core.logging import get_logger
from core.settings import Settings
from core.temporal_config import TemporalConfigError, TemporalConnection, load_connection
from core.temporal_errors import TemporalUnavailable, explain

log = get_logger("soundfoundry.temporal")

SEARCH_ATTRIBUTE_NAMES = tuple(key.name for key in SEARCH_ATTRIBUTES)
KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
# Calls made to check the connection answer within this, so a black-holed address fails
# start-up and readiness promptly instead of after the SDK's retries.
CHECK_TIMEOUT = timedelta(seconds=10)

# The readiness probe: a start of this workflow carrying every attribute. Temporal checks
# the attributes before it looks for an existing workflow, so once the probe exists the
# answer is "already started" (usable) or InvalidArgument (not yet), and nothing is written.
# The first probe creates it, on a task queue nobody polls, closed by its timeout.
PROBE_WORKFLOW_ID = "soundfoundry-search-attribute-probe"
PROBE_WORKFLOW_TYPE = "SearchAttributeProbe"
PROBE_TASK_QUEUE = "soundfoundry-search-attribute-probe"
# Temporal refreshes its namespace cache every 10 s by default; attributes just added are
# usable once every service has refreshed.
USABLE_WAIT_S = 60.0
# How a server says this identity may not list or add search attributes: an authorizer's
# refusal, or an operator service that is not offered to it at all.
NOT_OURS = frozenset({RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED})


def temporal_connection(settings: Settings) -> TemporalConnection:
    """Where and how `settings` reach Temporal; raises TemporalUnavailable (one sentence)
    when the profile or a certificate or key cannot be read."""
    try:
        return load_connection(
            settings.temporal_environment(),
            default_address=settings.temporal_address,
            default_namespace=settings.temporal_namespace,
        )
    except TemporalConfigError as exc:
        raise TemporalUnavailable(str(exc)) from None


async def client_for(
    settings: Settings,
    *,
    interceptors: Sequence[Interceptor] = (),
    runtime: Runtime | None = None,
) -> Client:
    """A client for the configured Temporal; extra interceptors run inside the tracing one.

    Raises TemporalUnavailable with the cause in one sentence when it cannot connect."""
    connection = temporal_connection(settings)
    try:
        return await Client.connect(
            connection.address,
            namespace=connection.namespace,
            api_key=connection.api_key,
            tls=connection.tls,
            rpc_metadata=dict(connection.rpc_metadata),
            data_converter=pydantic_data_converter,
            interceptors=[TracingInterceptor(), *interceptors],
            runtime=runtime,
        )
    except Exception as exc:
        raise _unavailable(exc, connection) from None


async def describe_namespace(
    client: Client, connection: TemporalConnection
) -> DescribeNamespaceResponse:
    """The namespace, proving it exists and our identity may use it; TemporalUnavailable
    (one sentence) otherwise."""
    try:
        return await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=connection.namespace), timeout=CHECK_TIMEOUT
        )
    except Exception as exc:
        raise _unavailable(exc, connection) from None


def _unavailable(error: Exception, connection: TemporalConnection) -> TemporalUnavailable:
    # The SDK's error can be a page of transport detail: the sentence is what operators
    # read; the detail stays at debug level (scrubbed like every log line).
    log.debug("temporal call failed", error=f"{type(error).__name__}: {error}")
    return TemporalUnavailable(explain(error, connection))


class SearchAttributesMissing(Exception):
    """The attributes are not registered and this identity may not register them; str() says
    what to run."""

    def __init__(self, namespace: str, names: Sequence[str]) -> None:
        self.namespace = namespace
        self.names = list(names)
        super().__init__(
            f"search attributes {', '.join(names)} are not registered on namespace"
            f" {namespace} and this identity may not add them; an operator runs:"
            f" {create_command(namespace, names)}"
            " (Temporal Cloud: add them as Keyword in the namespace's settings or with tcld),"
            " or set SEARCH_ATTRIBUTES_ENABLED=false"
        )


def create_command(namespace: str, names: Sequence[str]) -> str:
    """The `temporal` CLI command that adds `names` as Keyword attributes."""
    pairs = " ".join(f"--name {name} --type Keyword" for name in names)
    return f"temporal operator search-attribute create --namespace {namespace} {pairs}"


async def missing_search_attributes(client: Client, namespace: str) -> list[str]:
    """Our attributes `namespace` lacks (or has with another type). Needs the right to
    list them (raises RPCError otherwise: see NOT_OURS)."""
    registered = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace), timeout=CHECK_TIMEOUT
    )
    return [
        name for name in SEARCH_ATTRIBUTE_NAMES if registered.custom_attributes.get(name) != KEYWORD
    ]


@dataclass(frozen=True)
class SearchAttributeState:
    added: list[str]
    # False: this identity may not list them; their presence was proven by the probe.
    listed: bool = True


async def ensure_search_attributes(client: Client, namespace: str) -> SearchAttributeState:
    """Add the missing attributes as Keyword where this identity may; `added` names them.

    Where it may not list or add them, they must already be usable (proven with the start
    probe, which a worker's rights allow); else raises SearchAttributesMissing."""
    try:
        missing = await missing_search_attributes(client, namespace)
    except RPCError as exc:
        if exc.status not in NOT_OURS:
            raise
        if await search_attributes_usable(client) is None:
            return SearchAttributeState([], listed=False)
        raise SearchAttributesMissing(namespace, SEARCH_ATTRIBUTE_NAMES) from None
    if not missing:
        return SearchAttributeState([])
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace, search_attributes=dict.fromkeys(missing, KEYWORD)
            ),
            timeout=CHECK_TIMEOUT,
        )
    except RPCError as exc:
        if exc.status in NOT_OURS:
            raise SearchAttributesMissing(namespace, missing) from None
        # Another worker registered them first.
        if exc.status is not RPCStatusCode.ALREADY_EXISTS:
            raise
    return SearchAttributeState(missing)


async def search_attributes_usable(client: Client) -> str | None:
    """None when a workflow start carrying every attribute would pass Temporal's check,
    else the server's reason (an attribute unknown, or not yet in the namespace cache).

    A bare service call, so client interceptors (tracing, tests' faults) never see it as
    one of our starts."""
    request = StartWorkflowExecutionRequest(
        namespace=client.namespace,
        workflow_id=PROBE_WORKFLOW_ID,
        workflow_type=WorkflowType(name=PROBE_WORKFLOW_TYPE),
        task_queue=TaskQueue(name=PROBE_TASK_QUEUE),
        # Created the first time only; closed by this timeout, nobody polls its queue.
        workflow_execution_timeout=Duration(seconds=1),
        request_id=str(uuid.uuid4()),
        identity=client.identity,
        workflow_id_reuse_policy=WorkflowIdReusePolicy.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
        workflow_id_conflict_policy=WorkflowIdConflictPolicy.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
    )
    probe = TypedSearchAttributes(
        [SearchAttributePair(key, "probe") for key in SEARCH_ATTRIBUTES]  # type: ignore[misc]
    )
    encode_search_attributes(probe, request.search_attributes)
    try:
        await client.workflow_service.start_workflow_execution(request, timeout=CHECK_TIMEOUT)
    except RPCError as exc:
        if exc.status is RPCStatusCode.ALREADY_EXISTS:
            return None  # checked the attributes, then found the probe: usable
        if exc.status is RPCStatusCode.INVALID_ARGUMENT:
            return exc.message
        raise
    return None


async def wait_until_usable(client: Client, timeout_s: float = USABLE_WAIT_S) -> None:
    """Until a start carrying our attributes would succeed: right after they are added,
    Temporal (SQL visibility) refuses them for a while as unmapped until its namespace cache
    refreshes. Raises TemporalUnavailable with the server's last reason after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (reason := await search_attributes_usable(client)) is not None:
        if time.monotonic() > deadline:
            raise TemporalUnavailable(
                f"Temporal still refuses our search attributes after {timeout_s:.0f} s: {reason}"
            )
        await asyncio.sleep(0.5)


@dataclass(frozen=True)
class NamespaceReadiness:
    namespace: DescribeNamespaceResponse
    attributes: SearchAttributeState
    # How long Temporal took to accept the attributes on new workflows.
    waited_s: float


async def make_namespace_ready(
    client: Client, settings: Settings, *, attributes: bool = True
) -> NamespaceReadiness:
    """What a track start needs: the namespace exists and is ours to use, and (with
    `attributes`) our search attributes are registered (by us where we may) and accepted on
    new workflows. Raises TemporalUnavailable or SearchAttributesMissing, one sentence."""
    connection = temporal_connection(settings)
    described = await describe_namespace(client, connection)
    if not attributes:
        return NamespaceReadiness(described, SearchAttributeState([]), 0.0)
    try:
        state = await ensure_search_attributes(client, settings.temporal_namespace)
        started = time.monotonic()
        # Just added, they are refused for a while (the server's namespace cache).
        await wait_until_usable(client)
    except RPCError as exc:
        raise _unavailable(exc, connection) from None
    return NamespaceReadiness(described, state, time.monotonic() - started)
