"""The kinds of refusal a use case can answer with.

Each domain exception derives from one kind; the API maps kinds to HTTP statuses in one
place (`api/errors.py`) and the CLI prints the message. The message is for the user: it
says what was refused and, where there is one, what to do.
"""

from __future__ import annotations


class Refused(Exception):
    """A request the product will not carry out as asked; nothing was changed."""


class Rejected(Refused):
    """Content that is not allowed (a cover the sanitizer refuses)."""


class NotFound(Refused):
    """No such thing, or not the caller's (which looks the same, so ids leak nothing)."""


class Forbidden(Refused):
    """Not allowed for this user or while a feature is turned off."""


class Conflict(Refused):
    """Not in this state: try again later, or reload and look."""


class Invalid(Refused):
    """Well-formed but unacceptable content."""


class TooLarge(Refused):
    """Over a size limit."""


class OutOfCredits(Refused):
    """The balance does not cover it."""


class Busy(Refused):
    """Too many at once for this user; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(Refused):
    """A service we depend on is out of reach; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
