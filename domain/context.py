"""What a use case works with: built by the API at start-up, and by the CLI and the worker
from the same settings."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class ConnectedClient:
    """A Temporal connection that already has its client (the worker's, the CLI's)."""

    connected: Client

    async def client(self) -> Client:
        return self.connected


@dataclass(frozen=True)
class UseCaseContext:
    settings: Settings
    sessions: SessionFactory
    jobs: JobStore
    storage: Storage
    temporal: TemporalConnection
