"""Timeouts and retry policies of TrackWorkflow's activities, and the waits between them.

Changing one changes what new runs record in history (a retry policy is part of each
scheduled activity's event), so it is a workflow change like any other: see the rule in
workflows/track.py.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from core.contracts import NON_RETRYABLE, RetryBounds

NON_RETRYABLE_TYPES = sorted(code.value for code in NON_RETRYABLE)


def doubling(
    first: timedelta, most: timedelta, attempts: int, non_retryable: list[str] | None = None
) -> RetryPolicy:
    """Retries `first` apart, doubling up to `most`, `attempts` in all."""
    return RetryPolicy(
        initial_interval=first,
        backoff_coefficient=2.0,
        maximum_interval=most,
        maximum_attempts=attempts,
        non_retryable_error_types=non_retryable,
    )


# Bookkeeping (database, storage) is cheap and must eventually succeed: retry patiently.
BOOKKEEPING_RETRY = doubling(timedelta(seconds=1), timedelta(seconds=30), 20)
BOOKKEEPING_TIMEOUT = timedelta(seconds=60)

SUBMIT_TIMEOUT = timedelta(seconds=60)
# Cleanup gets the provider's answer in flight, plus a margin.
CLEANUP_TIMEOUT = timedelta(minutes=5)
# The first look at a submitted job (when the submit's own look saw it running).
FIRST_POLL_S = 1.0
# A track held by a provider's in-flight cap asks again at most this far apart.
MAX_CAPACITY_WAIT_S = 10.0

MASTER_TIMEOUT = timedelta(minutes=10)
MASTER_RETRY = doubling(timedelta(seconds=1), timedelta(seconds=30), 5, NON_RETRYABLE_TYPES)

# A receiver that is down gets about an hour of retries before we give up on it.
WEBHOOK_TIMEOUT = timedelta(seconds=60)
WEBHOOK_RETRY = doubling(timedelta(seconds=1), timedelta(minutes=10), 12)


def provider_retry(bounds: RetryBounds) -> RetryPolicy:
    """A call on a provider, retried within the plan's bounds; errors another attempt at
    the same provider cannot fix are not retried."""
    return doubling(
        timedelta(seconds=bounds.initial_interval_s),
        timedelta(seconds=bounds.max_interval_s),
        bounds.max_attempts,
        NON_RETRYABLE_TYPES,
    )
