"""The provider port: what the pay-once policy calls on a music provider.

The adapters (activities/providers/) implement it; the policy (domain/providers/pay_once.py)
and its tests depend only on this, so a rule that could pay twice is tested without
Temporal, a worker or an HTTP client.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from core.contracts import NON_RETRYABLE, ErrorCode, GenerationRequest, Submission


class ProviderError(Exception):
    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_after_s: float | None = None,
        status: int | None = None,
        sent: bool = False,
        quiet: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.status = status
        # For a submit: the request left and the provider may have acted on it, so
        # sending it again could pay twice.
        self.sent = sent
        # A routine refusal (still waiting for capacity) that the job log has already told.
        self.quiet = quiet

    @property
    def retryable(self) -> bool:
        return self.code not in NON_RETRYABLE

    @classmethod
    def from_status(
        cls, status: int, message: str, retry_after_s: float | None = None
    ) -> ProviderError:
        code = {
            401: ErrorCode.UNAUTHORIZED,
            403: ErrorCode.FORBIDDEN,
            422: ErrorCode.INVALID,
            429: ErrorCode.RATE_LIMITED,
        }.get(status)
        if code is None:
            code = ErrorCode.SERVER if status >= 500 else ErrorCode.OTHER
        return cls(code, message, retry_after_s=retry_after_s, status=status)


Beat = Callable[[], None]
"""Called while a wait goes on, so a dead worker is noticed (a Temporal heartbeat)."""


class PaidProvider(Protocol):
    """A provider whose jobs cost money: one request starts one job."""

    name: str

    @property
    def remote(self) -> bool: ...

    def model_for(self, request: GenerationRequest) -> str | None: ...

    async def submit(
        self,
        request: GenerationRequest,
        *,
        track_id: str,
        token: str | None = None,
        webhook_url: str | None = None,
    ) -> tuple[str, dict[str, str]]:
        """Start a job with exactly one request; ProviderError(sent=True) if the request
        left and its answer did not come back."""
        ...

    async def find_submission(
        self, request: GenerationRequest, *, since: datetime, exclude: set[str]
    ) -> str | None:
        """The run id of our job for `request` from the provider's own listing, if any."""
        ...

    async def cancel(self, submission: Submission) -> None: ...


class Providers(Protocol):
    """The configured providers, by name."""

    def get(self, name: str) -> PaidProvider: ...
