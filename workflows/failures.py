"""How TrackWorkflow names what went wrong: the error code and message a failed job
records, and whether a step failed only because its workers died."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType

from core.contracts import ErrorCode

NO_CAPABLE_PROVIDER = "no_capable_provider"


class GenerationFailed(Exception):
    """No provider of the chain delivered: the track fails with `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LinkFailed(Exception):
    """One provider of the chain did not deliver; the next one may."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def workers_lost(exc: ActivityError) -> bool:
    """The activity's attempts ran out on timeouts: its workers died or hung, the provider
    never answered an error (calls to providers time out inside the activity)."""
    cause = exc.cause
    return isinstance(cause, TimeoutError) and cause.type in (
        TimeoutType.HEARTBEAT,
        TimeoutType.START_TO_CLOSE,
    )


def error_code(exc: BaseException) -> str:
    if isinstance(exc, GenerationFailed | LinkFailed):
        return exc.code
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    if isinstance(cause, ApplicationError) and cause.type:
        return cause.type
    if isinstance(cause, TimeoutError):
        return ErrorCode.TIMEOUT.value
    return ErrorCode.OTHER.value


def error_message(exc: BaseException) -> str:
    cause = exc.cause if isinstance(exc, ActivityError) and exc.cause else exc
    return str(cause) or type(cause).__name__
