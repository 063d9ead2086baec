"""How a use case's refusal reaches an HTTP client: one status per kind, the message as
`detail` (FastAPI's shape), and `Retry-After` where waiting helps."""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from domain.errors import (
    Busy,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    OutOfCredits,
    Refused,
    Rejected,
    TooLarge,
    Unavailable,
)

STATUS_BY_KIND: dict[type[Refused], int] = {
    Rejected: status.HTTP_400_BAD_REQUEST,
    NotFound: status.HTTP_404_NOT_FOUND,
    Forbidden: status.HTTP_403_FORBIDDEN,
    Conflict: status.HTTP_409_CONFLICT,
    Invalid: status.HTTP_422_UNPROCESSABLE_CONTENT,
    TooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    OutOfCredits: status.HTTP_402_PAYMENT_REQUIRED,
    Busy: status.HTTP_429_TOO_MANY_REQUESTS,
    Unavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def status_for(error: Refused) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS_BY_KIND:
            return STATUS_BY_KIND[kind]
    return status.HTTP_400_BAD_REQUEST


async def refused(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, Refused)
    headers = {}
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"detail": str(error)}, status_for(error), headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(Refused, refused)
