"""The provider port: what the pay-once policy calls on a music provider.

The adapters (activities/providers/) implement it; the policy (domain/providers/pay_once.py)
and its tests depend only on this, so a rule that could pay twice is tested without
Temporal, a worker or an HTTP client.
"""

from __future__ import annotations

from abc import abstractmethod
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
    """A provider whose jobs cost money: one request starts one job. The adapters'
    base class (activities.providers.base.MusicProvider) extends this."""

    name: str

    @property
    def remote(self) -> bool:
        """True when jobs run at the provider and must be polled; False when the whole
        render happens in `download` (the local synth)."""
        return True

    @abstractmethod
    def model_for(self, request: GenerationRequest) -> str | None:
        """The model that would serve this request."""

    @abstractmethod
    async def submit(
        self,
        request: GenerationRequest,
        *,
        track_id: str,
        token: str | None = None,
        webhook_url: str | None = None,
    ) -> tuple[str, dict[str, str]]:
        """Start a paid job with exactly one request; return its id and follow-up URLs.

        Never re-sends: a failure after the request left raises ProviderError with
        `sent=True`, and the caller resolves it instead of trying again.
        """

    async def find_submission(
        self, request: GenerationRequest, *, since: datetime, exclude: set[str]
    ) -> str | None:
        """The run id of a job we submitted for `request` at or after `since` whose
        answer was lost, from the provider's own records; None if it cannot tell."""
        return None

    @abstractmethod
    async def cancel(self, submission: Submission) -> None: ...


class Providers(Protocol):
    """The configured providers, by name."""

    def get(self, name: str) -> PaidProvider: ...
