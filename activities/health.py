"""A cheap authenticated check of every provider, run on a worker."""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.providers.registry import ProviderRegistry
from core.contracts import ProviderHealth, ProviderHealthReport


class HealthActivities:
    def __init__(self, providers: ProviderRegistry) -> None:
        self.providers = providers

    @activity.defn(name="check_provider_health")
    async def check_provider_health(self) -> ProviderHealthReport:
        names = self.providers.names
        results = await asyncio.gather(
            *(self.providers.get(name).health() for name in names), return_exceptions=True
        )
        report: dict[str, ProviderHealth] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                report[name] = ProviderHealth(status="fail", error=type(result).__name__)
            else:
                report[name] = result
        return ProviderHealthReport(providers=report)
