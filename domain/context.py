"""What a use case works with. The API's `Services` (built at start-up) is one; anything
with these attributes is."""

from __future__ import annotations

from typing import Protocol

from temporalio.client import Client

from core.db import SessionFactory
from core.settings import Settings
from core.storage import Storage
from domain.tracks.jobs import JobStore


class TemporalConnection(Protocol):
    async def client(self) -> Client:
        """The Temporal client, connected on first use."""
        ...


class Context(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def sessions(self) -> SessionFactory: ...
    @property
    def jobs(self) -> JobStore: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def temporal(self) -> TemporalConnection: ...
