"""The API's Temporal client, connected lazily so the API can start before Temporal."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from temporalio.client import Client, Interceptor

from core.logging import get_logger
from core.settings import Settings
from core.temporal import (
    SEARCH_ATTRIBUTE_NAMES,
    client_for,
    create_command,
    describe_namespace,
    search_attributes_usable,
    temporal_connection,
)
from core.temporal_errors import TemporalUnavailable, explain

log = get_logger("soundfoundry.api")

# Seconds a client refused a create because of the attributes is told to wait.
ATTRIBUTES_RETRY_AFTER_S = 10


class TemporalGateway:
    def __init__(self, settings: Settings, interceptors: Sequence[Interceptor] = ()) -> None:
        self._settings = settings
        # Extra client interceptors run inside the tracing one, nearest the network.
        self._interceptors = list(interceptors)
        self._client: Client | None = None
        self._lock = asyncio.Lock()
        # Once a start carrying the attributes passed, it keeps passing (attributes are
        # not removed in normal operation), so the probe is not repeated.
        self._attributes_usable = not settings.search_attributes_enabled

    async def client(self) -> Client:
        """Raises TemporalUnavailable (one sentence) when Temporal cannot be reached."""
        async with self._lock:
            if self._client is None:
                self._client = await client_for(self._settings, interceptors=self._interceptors)
            return self._client

    async def problem(self) -> str | None:
        """None when a track can be started now, else why not, in one sentence: Temporal out
        of reach or refusing us, the namespace missing, or the search attributes not
        usable (yet) on it."""
        try:
            client = await asyncio.wait_for(self.client(), timeout=5)
            if not await asyncio.wait_for(client.service_client.check_health(), timeout=3):
                return "Temporal reports itself unhealthy"
            await describe_namespace(client, temporal_connection(self._settings))
            return await self.start_problem()
        except TimeoutError:
            return f"Temporal at {self._settings.temporal_address} did not answer in time"
        except TemporalUnavailable as exc:
            return str(exc)
        except Exception as exc:
            return explain(exc, temporal_connection(self._settings))

    async def start_problem(self) -> str | None:
        """None when a track workflow's start would pass Temporal's check of our search
        attributes; else the reason (and what an operator runs)."""
        if self._attributes_usable:
            return None
        try:
            reason = await search_attributes_usable(await self.client())
        except Exception:
            # Temporal itself out of reach: the create's own start handling answers that.
            return None
        if reason is None:
            self._attributes_usable = True
            return None
        namespace = self._settings.temporal_namespace
        return (
            f"track workflows cannot start yet: Temporal does not accept our search attributes"
            f" on namespace {namespace} ({reason}); a worker registers them when it starts"
            f" where it may, else an operator runs:"
            f" {create_command(namespace, SEARCH_ATTRIBUTE_NAMES)}"
        )

    async def report(self) -> None:
        """One log line at start-up: whether tracks can start, else why. The API serves
        either way; /api/health/ready keeps it out of rotation until they can."""
        problem = await self.problem()
        if problem is not None:
            log.warning("temporal not ready", reason=problem)
        else:
            log.info("temporal ready", temporal=temporal_connection(self._settings).describe())

    async def healthy(self) -> bool:
        return await self.problem() is None

    def ui_url(self, workflow_id: str) -> str:
        base = self._settings.temporal_ui_url.rstrip("/")
        return f"{base}/namespaces/{self._settings.temporal_namespace}/workflows/{workflow_id}"
