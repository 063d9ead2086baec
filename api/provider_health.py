"""Provider health as seen by a worker, cached briefly so probes stay cheap."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from temporalio.common import WorkflowIDConflictPolicy

from api.temporal import TemporalGateway
from core.contracts import (
    PROVIDER_HEALTH_WORKFLOW,
    ProviderHealthReport,
    provider_health_workflow_id,
)
from core.settings import Settings


class ProviderHealthUnavailable(Exception):
    pass


class ProviderHealthProbe:
    def __init__(self, temporal: TemporalGateway, settings: Settings) -> None:
        self._temporal = temporal
        self._settings = settings
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, str | None]] | None = None

    async def report(self) -> dict[str, str | None]:
        async with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self._settings.provider_health_cache_s:
                return self._cached[1]
            try:
                client = await self._temporal.client()
                # One shared id: concurrent probes join the same check instead of each
                # starting their own.
                report = await client.execute_workflow(
                    PROVIDER_HEALTH_WORKFLOW,
                    id=provider_health_workflow_id(self._settings.task_queue),
                    task_queue=self._settings.task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    execution_timeout=timedelta(seconds=30),
                    result_type=ProviderHealthReport,
                )
            except Exception as exc:
                raise ProviderHealthUnavailable(
                    f"no worker answered the provider check ({type(exc).__name__})"
                ) from exc
            flat = report.as_flat_dict()
            self._cached = (now, flat)
            return flat
