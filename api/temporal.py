"""The API's Temporal client, connected lazily so the API can start before Temporal."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from temporalio.client import Client, Interceptor

from core.settings import Settings
from core.temporal import client_for


class TemporalGateway:
    def __init__(self, settings: Settings, interceptors: Sequence[Interceptor] = ()) -> None:
        self._settings = settings
        # Extra client interceptors run inside the tracing one, nearest the network.
        self._interceptors = list(interceptors)
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Client:
        async with self._lock:
            if self._client is None:
                self._client = await client_for(self._settings, interceptors=self._interceptors)
            return self._client

    async def healthy(self) -> bool:
        try:
            client = await asyncio.wait_for(self.client(), timeout=3)
            return await asyncio.wait_for(client.service_client.check_health(), timeout=3)
        except Exception:
            return False

    def ui_url(self, workflow_id: str) -> str:
        base = self._settings.temporal_ui_url.rstrip("/")
        return f"{base}/namespaces/{self._settings.temporal_namespace}/workflows/{workflow_id}"
