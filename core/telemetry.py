"""Tracing (OpenTelemetry) and error reporting (Sentry) set-up for every process.

Tracing follows the standard OTEL_* environment: OTEL_TRACES_EXPORTER picks the exporter
(`otlp`, `console`, or the default `none`), OTEL_EXPORTER_OTLP_* configure OTLP/HTTP,
OTEL_SERVICE_NAME names the service and OTEL_TRACES_SAMPLER samples. With no exporter there
is still a provider, so log lines carry trace ids that link a job's lines together.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from core.logging import SecretScrubber, get_logger
from core.settings import Settings

log = get_logger("soundfoundry.telemetry")

_lock = threading.Lock()
_provider: TracerProvider | None = None


def tracer(name: str = "soundfoundry") -> trace.Tracer:
    """A tracer that follows the global provider, even one configured after this call."""
    return trace.get_tracer(name)


def configure_tracing(
    service_name: str, *, span_processors: Sequence[SpanProcessor] = ()
) -> TracerProvider | None:
    """Set the process-wide tracer provider once; later calls only add `span_processors`.

    OpenTelemetry allows one global provider per process, and tests build several apps and
    workers in one process, so the first call wins and the rest reuse it. Returns None when
    OTEL_SDK_DISABLED is set.
    """
    global _provider
    with _lock:
        if _provider is None:
            if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
                return None
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                _provider = current  # set up by someone else first: share it
            else:
                name = os.environ.get("OTEL_SERVICE_NAME") or service_name
                _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
                for processor in _exporter_processors():
                    _provider.add_span_processor(processor)
                trace.set_tracer_provider(_provider)
            _instrument_httpx()
        for processor in span_processors:
            _provider.add_span_processor(processor)
        return _provider


def _exporter_processors() -> list[SpanProcessor]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "none")
    processors: list[SpanProcessor] = []
    for name in (part.strip().lower() for part in names.split(",")):
        if name in ("", "none"):
            continue
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT, ... itself.
            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER ignored", exporter=name)
    return processors


def _instrument_httpx() -> None:
    # fal-client and replicate both speak httpx; patching its transports covers every
    # client, including those created before this call.
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def init_sentry(settings: Settings) -> bool:
    """Report errors to Sentry when SENTRY_DSN is set; returns whether it was started."""
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk

    scrubber = SecretScrubber(settings.secret_values())

    def scrub(event: Any, _hint: Any) -> Any:
        # Error messages can quote a provider's response; never ship a key with them.
        return scrubber.scrub(event)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.environment,
        release=settings.version,
        traces_sample_rate=0,
        before_send=scrub,
        before_breadcrumb=scrub,
    )
    return True
