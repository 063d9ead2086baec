"""The server's side of Worker Versioning: a deployment's versions, which one is current
or ramping, what still runs on each, and the routing changes an operator makes.

The Python client has no high-level API for worker deployments yet, so these are thin
calls of the WorkflowService RPCs (`temporal worker deployment ...` calls the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

from temporalio.api.deployment.v1 import WorkerDeploymentInfo
from temporalio.api.enums.v1 import WorkerDeploymentVersionStatus
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    ListWorkerDeploymentsRequest,
    ListWorkerDeploymentsResponse,
    SetWorkerDeploymentCurrentVersionRequest,
    SetWorkerDeploymentRampingVersionRequest,
)
from temporalio.client import Client
from temporalio.common import WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode

from core.deployment import deployment_version
from core.logging import get_logger
from core.settings import Settings

IDENTITY = "soundfoundry"
WorkerDeploymentSummary = ListWorkerDeploymentsResponse.WorkerDeploymentSummary
log = get_logger("soundfoundry.deployment")


class VersioningRefused(Exception):
    """An unversioned worker would start where versioning routes the work elsewhere."""


@dataclass(frozen=True)
class VersionState:
    build_id: str
    # Temporal's word: inactive, current, ramping, draining (pinned runs still open),
    # drained (none left; the server re-checks every few minutes).
    status: str
    created: datetime | None
    # Open runs pinned to this version (None: not counted); a version drains to 0.
    running: int | None = None


@dataclass(frozen=True)
class DeploymentState:
    name: str
    current: str | None
    ramping: str | None
    ramp_percentage: float
    versions: tuple[VersionState, ...]
    conflict_token: bytes


def _status(summary: WorkerDeploymentInfo.WorkerDeploymentVersionSummary) -> str:
    name = WorkerDeploymentVersionStatus.Name(summary.status)
    return name.removeprefix("WORKER_DEPLOYMENT_VERSION_STATUS_").lower()


async def describe(client: Client, name: str) -> DeploymentState | None:
    """The deployment as the server sees it, or None before any of its workers polled."""
    if not await exists(client, name):
        return None
    try:
        answer = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=name)
        )
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise
    info = answer.worker_deployment_info
    routing = info.routing_config
    versions = tuple(
        VersionState(
            build_id=summary.deployment_version.build_id,
            status=_status(summary),
            created=summary.create_time.ToDatetime() if summary.HasField("create_time") else None,
        )
        for summary in sorted(info.version_summaries, key=lambda s: s.create_time.ToNanoseconds())
    )
    return DeploymentState(
        name=info.name,
        current=routing.current_deployment_version.build_id or None,
        ramping=routing.ramping_deployment_version.build_id or None,
        ramp_percentage=routing.ramping_version_percentage,
        versions=versions,
        conflict_token=answer.conflict_token,
    )


def running_query(version: WorkerDeploymentVersion) -> str:
    """Visibility query for the open runs pinned to `version`: the server's own test of
    whether a version has drained (server 1.29 tags a pinned run's BuildIds with
    `pinned:<deployment>:<build id>`)."""
    tag = f"pinned:{version.deployment_name}:{version.build_id}"
    return f"BuildIds = '{tag}' AND ExecutionStatus = 'Running'"


async def running_on(client: Client, version: WorkerDeploymentVersion) -> int:
    return (await client.count_workflows(running_query(version))).count


async def with_running_counts(client: Client, state: DeploymentState) -> DeploymentState:
    versions = []
    for version in state.versions:
        count = await running_on(client, WorkerDeploymentVersion(state.name, version.build_id))
        versions.append(
            VersionState(version.build_id, version.status, version.created, running=count)
        )
    return DeploymentState(
        state.name,
        state.current,
        state.ramping,
        state.ramp_percentage,
        tuple(versions),
        state.conflict_token,
    )


class _Naming(TypedDict):
    """The fields every routing change names: where, which version, who asked."""

    namespace: str
    deployment_name: str
    build_id: str
    identity: str


def _naming(client: Client, version: WorkerDeploymentVersion) -> _Naming:
    return _Naming(
        namespace=client.namespace,
        deployment_name=version.deployment_name,
        build_id=version.build_id,
        identity=IDENTITY,
    )


async def set_current(
    client: Client, version: WorkerDeploymentVersion, *, conflict_token: bytes = b""
) -> None:
    """Route new workflows (and auto-upgrade ones) to `version`; pinned runs stay put.
    Clears a ramp to the same version."""
    await client.workflow_service.set_worker_deployment_current_version(
        SetWorkerDeploymentCurrentVersionRequest(
            **_naming(client, version), conflict_token=conflict_token
        )
    )


async def set_ramping(client: Client, version: WorkerDeploymentVersion, percentage: float) -> None:
    """Send `percentage` of new workflows to `version`, the rest to the current one."""
    await client.workflow_service.set_worker_deployment_ramping_version(
        SetWorkerDeploymentRampingVersionRequest(**_naming(client, version), percentage=percentage)
    )


async def promote_if_first(
    client: Client, version: WorkerDeploymentVersion, *, always: bool = False, wait_s: float = 30
) -> bool:
    """Make `version` current when its deployment has no current version yet (a first
    deployment: nothing to roll over from), or `always` (the dev stack: the code on disk is
    the code that runs). Returns whether it did. The version exists on the server only once
    its workers polled, so this retries until then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        state = await describe(client, version.deployment_name)
        known = state is not None and any(v.build_id == version.build_id for v in state.versions)
        if state is not None and state.current == version.build_id:
            return False
        if state is not None and state.current is not None and not always:
            return False
        if known and state is not None:
            try:
                # With the describe's token: a version another worker made current
                # meanwhile is not overwritten.
                await set_current(client, version, conflict_token=state.conflict_token)
            except RPCError as exc:
                if exc.status not in (
                    RPCStatusCode.FAILED_PRECONDITION,
                    RPCStatusCode.ABORTED,
                    RPCStatusCode.NOT_FOUND,
                ):
                    raise
            else:
                return True
        if loop.time() > deadline:
            raise TimeoutError(
                f"worker deployment version {version.to_canonical_string()} did not appear"
                f" on the server within {wait_s} s"
            )
        await asyncio.sleep(0.2)


async def _deployments(client: Client) -> AsyncIterator[WorkerDeploymentSummary]:
    page = b""
    while True:
        answer = await client.workflow_service.list_worker_deployments(
            ListWorkerDeploymentsRequest(namespace=client.namespace, next_page_token=page)
        )
        for summary in answer.worker_deployments:
            yield summary
        page = answer.next_page_token
        if not page:
            return


async def exists(client: Client, name: str) -> bool:
    """Whether a worker of deployment `name` has polled yet (asked by listing: a describe
    of a missing deployment makes the server log an error)."""
    return any([summary.name == name async for summary in _deployments(client)])


async def versioning_in_use(client: Client) -> str | None:
    """Why an unversioned worker must not start on this namespace, or None: a deployment
    routes new work to a version, so an unversioned worker would get none of it."""
    async for summary in _deployments(client):
        routing = summary.routing_config
        current = routing.current_deployment_version.build_id
        if current or routing.ramping_deployment_version.build_id:
            return (
                f"WORKER_VERSIONING is off, but namespace '{client.namespace}' routes new"
                f" work to worker deployment '{summary.name}' (current version:"
                f" {current or 'none'}); run versioned workers (WORKER_VERSIONING=on)"
            )
    return None


class WorkerVersioning:
    """What a worker process does about versioning as it starts: refuse to run unversioned
    where versioning is in use; once polling, make its version current if it should."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    async def refuse_unversioned(self) -> None:
        if self.settings.worker_versioning:
            return
        if reason := await versioning_in_use(self.client):
            raise VersioningRefused(reason)

    async def make_current(self) -> None:
        if not self.settings.worker_versioning:
            return
        version = deployment_version(self.settings)
        always = self.settings.worker_make_current == "always"
        if await promote_if_first(self.client, version, always=always):
            log.info("deployment version made current", version=version.to_canonical_string())
