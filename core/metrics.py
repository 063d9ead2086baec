"""Every Prometheus metric the product exports, in one place.

deploy/prometheus/alerts.yml is written against these names and labels: change them together.
The API and the worker each serve their own registry, so neither exposes the other's series
as zeros; `s3_errors_total` is in both because both processes talk to S3.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from core.logging import get_logger
from core.settings import KNOWN_PROVIDERS

log = get_logger("soundfoundry.metrics")

API_REGISTRY: Final = CollectorRegistry()
WORKER_REGISTRY: Final = CollectorRegistry()

# Tracks up to a minute long are "short": the job-duration SLO is stated for them.
SHORT_TRACK_MAX_S: Final = 60
# The SLO thresholds (120 s p95, 180 s p99) must be bucket boundaries.
JOB_DURATION_BUCKETS: Final = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800)
QUEUE_LATENCY_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# The S3 calls S3Storage makes, named as in the S3 API (and the `s3.*` span names).
S3_OPERATIONS: Final = (
    "PutObject",
    "GetObject",
    "CopyObject",
    "DeleteObject",
    "HeadObject",
    "ListObjectsV2",
    "HeadBucket",
    "CreateBucket",
)
# Error codes the ProviderAuthFailures alert watches.
AUTH_ERROR_CODES: Final = ("http_401", "http_403")

HTTP_REQUESTS: Final = Counter(
    "http_requests_total",
    "API requests answered, by route template, method and status code.",
    ["route", "method", "status"],
    registry=API_REGISTRY,
)
HTTP_REQUEST_DURATION: Final = Histogram(
    "http_request_duration_seconds",
    "Time the API took to answer a request.",
    ["route", "method"],
    registry=API_REGISTRY,
)

JOB_DURATION: Final = Histogram(
    "job_duration_seconds",
    "Time from a job's creation to its end state.",
    ["outcome", "length"],
    buckets=JOB_DURATION_BUCKETS,
    registry=WORKER_REGISTRY,
)
JOB_QUEUE_LATENCY: Final = Histogram(
    "job_queue_latency_seconds",
    "Time from a job's creation until a worker starts rendering it.",
    buckets=QUEUE_LATENCY_BUCKETS,
    registry=WORKER_REGISTRY,
)
PROVIDER_ATTEMPTS: Final = Counter(
    "provider_attempts_total",
    "Submit, poll and audio-check attempts per provider, by outcome and error code.",
    ["provider", "outcome", "error_code"],
    registry=WORKER_REGISTRY,
)
PROVIDER_FALLBACKS: Final = Counter(
    "provider_fallbacks_total",
    "Tracks handed on to the next provider after one failed.",
    ["from_provider", "to_provider"],
    registry=WORKER_REGISTRY,
)
PROVIDER_AMBIGUOUS_SUBMISSIONS: Final = Counter(
    "provider_ambiguous_submissions_total",
    "Submits that left and whose outcome could not be found: each may be a paid job.",
    ["provider"],
    registry=WORKER_REGISTRY,
)
PROVIDER_IN_FLIGHT: Final = Gauge(
    "provider_jobs_in_flight",
    "Jobs running at each provider for us (all workers), as the ledger last showed.",
    ["provider"],
    registry=WORKER_REGISTRY,
)
PROVIDER_CAPACITY_WAIT: Final = Histogram(
    "provider_capacity_wait_seconds",
    "How long a track waited for room under its provider's in-flight cap.",
    ["provider"],
    buckets=QUEUE_LATENCY_BUCKETS,
    registry=WORKER_REGISTRY,
)
PROVIDER_POLLS: Final = Counter(
    "provider_polls_total",
    "Status calls made to providers while waiting on their jobs.",
    ["provider"],
    registry=WORKER_REGISTRY,
)
PROVIDER_JOBS_CANCELLED: Final = Counter(
    "provider_jobs_cancelled_total",
    "Provider jobs we asked to stop because nothing waited for them any more, by why.",
    ["provider", "reason"],
    registry=WORKER_REGISTRY,
)
S3_ERRORS: Final = Counter(
    "s3_errors_total",
    "S3 calls that failed (client errors and connection errors).",
    ["operation"],
    registry=None,
)
for _registry in (API_REGISTRY, WORKER_REGISTRY):
    _registry.register(S3_ERRORS)
    # process_*, python_gc_*, python_info: the same series a default registry has.
    for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        _registry.register(_collector)


def track_length(duration_s: float) -> str:
    return "short" if duration_s <= SHORT_TRACK_MAX_S else "long"


def seconds_since(start: datetime) -> float:
    # SQLite hands back naive datetimes; they are UTC like everything we store.
    now = datetime.now(UTC)
    if start.tzinfo is None:
        now = now.replace(tzinfo=None)
    return max(0.0, (now - start).total_seconds())


def observe_job_end(outcome: str, created_at: datetime, duration_s: float) -> None:
    JOB_DURATION.labels(outcome=outcome, length=track_length(duration_s)).observe(
        seconds_since(created_at)
    )


def observe_queue_latency(created_at: datetime) -> None:
    JOB_QUEUE_LATENCY.observe(seconds_since(created_at))


def count_provider_attempt(provider: str, error_code: str | None) -> None:
    outcome = "ok" if error_code is None else "error"
    PROVIDER_ATTEMPTS.labels(provider=provider, outcome=outcome, error_code=error_code or "").inc()


def count_fallback(from_provider: str, to_provider: str) -> None:
    PROVIDER_FALLBACKS.labels(from_provider=from_provider, to_provider=to_provider).inc()


def count_ambiguous_submission(provider: str) -> None:
    PROVIDER_AMBIGUOUS_SUBMISSIONS.labels(provider=provider).inc()


def set_in_flight(counts: dict[str, int]) -> None:
    for provider in KNOWN_PROVIDERS:
        PROVIDER_IN_FLIGHT.labels(provider=provider).set(counts.get(provider, 0))


def observe_capacity_wait(provider: str, seconds: float) -> None:
    PROVIDER_CAPACITY_WAIT.labels(provider=provider).observe(seconds)


def count_poll(provider: str) -> None:
    PROVIDER_POLLS.labels(provider=provider).inc()


def count_provider_cancel(provider: str, reason: str) -> None:
    PROVIDER_JOBS_CANCELLED.labels(provider=provider, reason=reason).inc()


def count_s3_error(operation: str) -> None:
    S3_ERRORS.labels(operation=operation).inc()


def init_storage_series() -> None:
    """Zero-valued S3 error series, so rate() sees the first error of an operation."""
    for operation in S3_OPERATIONS:
        S3_ERRORS.labels(operation=operation)


def init_worker_series(providers: Iterable[str] = KNOWN_PROVIDERS) -> None:
    """Zero-valued series the worker alerts need before the first error happens."""
    init_storage_series()
    for provider in providers:
        for code in AUTH_ERROR_CODES:
            PROVIDER_ATTEMPTS.labels(provider=provider, outcome="error", error_code=code)
        PROVIDER_AMBIGUOUS_SUBMISSIONS.labels(provider=provider)


class RemoteTextCollector(Collector):
    """Re-exports the series of another Prometheus text endpoint (the Temporal SDK's).

    Fetched on every scrape, so one scrape of the worker sees both sets at the same time.
    """

    def __init__(self, url: str, timeout_s: float = 3.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def describe(self) -> Iterable[Metric]:
        # Names are unknown until a scrape; describing nothing keeps registration offline.
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                text = response.read().decode("utf-8")
        except OSError as exc:
            # The worker's own series still go out; the SDK's are missing from this scrape.
            log.warning("could not read SDK metrics", url=self.url, error=str(exc))
            return []
        return list(text_string_to_metric_families(text))


class _Chain(Collector):
    def __init__(self, collectors: Sequence[Collector | CollectorRegistry]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class MetricsServer:
    """The worker's /metrics endpoint, on its own thread so a busy event loop still answers."""

    def __init__(self, port: int, collectors: Sequence[Collector | CollectorRegistry]) -> None:
        self.port = port
        self._collectors = collectors
        self._server: WSGIServer | None = None

    def start(self, addr: str = "0.0.0.0") -> bool:
        try:
            server, _thread = start_http_server(self.port, addr, registry=_Chain(self._collectors))
        except OSError as exc:
            # A worker without metrics still does its job; the failing target is the signal.
            log.error("metrics endpoint not started", port=self.port, error=str(exc))
            return False
        self._server = server
        log.info("metrics endpoint ready", port=self.port)
        return True

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
