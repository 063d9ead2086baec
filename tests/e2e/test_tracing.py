"""One trace per job, from the HTTP request to the provider and S3 calls; logs join it.

The API and the worker run in this process, so one tracer provider sees every span. It
can be set once per process: the `spans` fixture attaches an in-memory exporter to it (the
first caller of configure_tracing creates it) and detaches by shutting the exporter down.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_trace_id

from core.logging import configure_logging
from core.settings import Settings
from core.telemetry import configure_tracing, init_sentry
from tests.conftest import Stack, eventually
from tests.fakes import Fail
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import FAL_KEY, REPLICATE_TOKEN, fal, hosted_settings, replicate
from tests.fakes.replicate_server import ReplicateFake

__all__ = ["fal", "replicate"]

JOB_SPANS = (
    "StartWorkflow:TrackWorkflow",
    "RunWorkflow:TrackWorkflow",
    "RunActivity:plan_track",
    "RunActivity:submit_generation",
    "RunActivity:collect_audio",
    "RunActivity:store_cover",
)


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = configure_tracing(
        "soundfoundry-test", span_processors=[SimpleSpanProcessor(exporter)]
    )
    if provider is None:
        pytest.skip("OTEL_SDK_DISABLED is set")
    yield exporter
    # The processor stays on the process's provider; a stopped exporter keeps nothing.
    exporter.shutdown()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


class Trace:
    """The finished spans of the trace that a request span starts."""

    def __init__(self, finished: Sequence[ReadableSpan], request_name: str) -> None:
        requests = [s for s in finished if s.name == request_name and s.kind is SpanKind.SERVER]
        assert len(requests) == 1, [s.name for s in finished]
        self.request = requests[0]
        self.trace_id = self.request.context.trace_id
        self.spans = [s for s in finished if s.context.trace_id == self.trace_id]
        self._by_id = {s.context.span_id: s for s in self.spans}

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def ancestors(self, span: ReadableSpan) -> list[ReadableSpan]:
        """Parents up to the root; fails if a link is missing from the trace."""
        chain: list[ReadableSpan] = []
        while span.parent is not None:
            parent = self._by_id.get(span.parent.span_id)
            assert parent is not None, f"{span.name}: parent {span.parent.span_id:x} missing"
            chain.append(parent)
            span = parent
        return chain

    def root(self, span: ReadableSpan) -> ReadableSpan:
        chain = self.ancestors(span)
        return chain[-1] if chain else span


def job_trace(spans: InMemorySpanExporter) -> Trace:
    return Trace(spans.get_finished_spans(), "POST /api/tracks")


async def finished_job_trace(spans: InMemorySpanExporter, *wanted: str) -> Trace:
    # Activity spans end a moment after the job is marked done.
    def has_all() -> bool:
        finished = {s.name for s in spans.get_finished_spans()}
        return all(name in finished for name in wanted)

    await eventually(has_all, timeout_s=15, what=f"spans {wanted}")
    return job_trace(spans)


async def test_a_track_is_one_trace_from_request_to_s3(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    _, auth = await stack.user()
    created = await stack.create_track(auth, duration_s=6)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job

    trace = await finished_job_trace(spans, "POST /api/tracks", *JOB_SPANS)
    assert trace.request.parent is None, "the request starts the trace"
    for name in JOB_SPANS:
        found = trace.named(name)
        assert found, f"{name} is not in the request's trace"
        assert all(trace.root(span) is trace.request for span in found), name
    run = trace.named("RunWorkflow:TrackWorkflow")[0]
    assert run.attributes is not None
    assert run.attributes["temporalWorkflowID"] == created["workflow_id"]
    # Every span of the trace hangs off the request (no broken parent links).
    assert all(trace.root(span) is trace.request for span in trace.spans)

    s3_spans = [s for s in trace.spans if s.name.startswith("s3.")]
    assert s3_spans, "no S3 spans in the trace"
    in_activity = [
        s for s in s3_spans if any(a.name.startswith("RunActivity:") for a in trace.ancestors(s))
    ]
    assert in_activity, [s.name for s in s3_spans]
    # The checked audio goes to its final key from the collecting activity.
    stored = next(
        s
        for s in in_activity
        if s.name == "s3.PutObject"
        and any(a.name == "RunActivity:collect_audio" for a in trace.ancestors(s))
    )
    assert stored.kind is SpanKind.CLIENT
    assert stored.attributes is not None
    assert stored.attributes["aws.s3.bucket"] == stack.settings.s3_bucket


@pytest.fixture
def hosted_overrides(fal: FalFake, replicate: ReplicateFake) -> dict[str, Any]:
    return hosted_settings(fal, replicate, submit_max_attempts=2, poll_max_attempts=2)


class CapturedLines(logging.Handler):
    """The JSON lines the product writes, as its own formatter renders them."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.raw.append(self.format(record))

    def parsed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.raw]


@pytest.fixture
def log_lines(stack: Stack) -> Iterator[CapturedLines]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    # The product's configuration, scrubbing the secrets this stack is configured with.
    configure_logging("INFO", stack.settings.secret_values())
    capture = CapturedLines()
    capture.setFormatter(root.handlers[0].formatter)
    root.handlers[:] = [capture]
    try:
        yield capture
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.reset_defaults()


class TestHostedProviders:
    @pytest.fixture
    def stack_overrides(self, hosted_overrides: dict[str, Any]) -> dict[str, Any]:
        return hosted_overrides

    async def test_the_fal_submit_call_is_in_the_trace(
        self, stack: Stack, spans: InMemorySpanExporter, fal: FalFake
    ) -> None:
        _, auth = await stack.user()
        created = await stack.create_track(auth, duration_s=10)
        job = await stack.wait_for_job(created["job_id"], auth)
        assert job["status"] == "COMPLETE", job

        trace = await finished_job_trace(spans, "POST /api/tracks", *JOB_SPANS)
        to_fal = [
            s
            for s in trace.spans
            if s.kind is SpanKind.CLIENT and _url(s).startswith(fal.url.rstrip("/"))
        ]
        assert to_fal, "no httpx span for fal in the trace"
        submit = [
            s
            for s in to_fal
            if _method(s) == "POST"
            and any(a.name == "RunActivity:submit_generation" for a in trace.ancestors(s))
        ]
        assert submit, [(s.name, _url(s)) for s in to_fal]
        assert trace.root(submit[0]) is trace.request

    async def test_activity_log_lines_carry_the_job_and_its_trace_and_no_secret(
        self,
        stack: Stack,
        spans: InMemorySpanExporter,
        fal: FalFake,
        log_lines: CapturedLines,
    ) -> None:
        # An error that quotes keys back: they must not reach a log line or the job log.
        fal.script(submit=[Fail(403, detail=f"key {FAL_KEY} rejected ({REPLICATE_TOKEN})")])
        _, auth = await stack.user()
        created = await stack.create_track(auth, duration_s=10)
        job = await stack.wait_for_job(created["job_id"], auth)
        assert job["status"] == "COMPLETE", job
        trace = await finished_job_trace(spans, "POST /api/tracks", *JOB_SPANS)
        trace_id = format_trace_id(trace.trace_id)

        lines = log_lines.parsed()
        mine = [line for line in lines if line.get("job_id") == created["job_id"]]
        submitted = [line for line in mine if line.get("job_event") == "submitted"]
        assert submitted, mine
        line = submitted[0]
        assert line["track_id"] == created["track_id"]
        assert line["workflow_id"] == created["workflow_id"]
        assert line["provider"] == "replicate"
        assert line["attempt"] == 1
        assert line["trace_id"] == trace_id
        assert len(line["span_id"]) == 16
        # Every activity line of the job is in the job's trace.
        assert {line.get("trace_id") for line in mine if "activity" in line} == {trace_id}

        failed = [line for line in mine if line.get("job_event") == "submitted.failed"]
        assert failed and failed[0]["error_code"] == "http_403", mine
        events = (await stack.http.get(f"/api/jobs/{created['job_id']}/logs", headers=auth)).json()
        assert any(e["event"] == "submitted.failed" for e in events)
        for secret in (FAL_KEY, REPLICATE_TOKEN):
            assert not [text for text in log_lines.raw if secret in text], secret
        assert any("[redacted]" in text for text in log_lines.raw)
        # Job events are shown to users: neither key may appear there either.
        for secret in (FAL_KEY, REPLICATE_TOKEN):
            assert secret not in json.dumps(events), secret


def _url(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("url.full") or attributes.get("http.url") or "")


def _method(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("http.request.method") or attributes.get("http.method") or "")


# --------------------------------------------------------------------------------------
# Sentry
# --------------------------------------------------------------------------------------
def test_sentry_starts_only_with_a_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    import sentry_sdk

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(sentry_sdk, "init", lambda *a, **kw: calls.append(kw))
    monkeypatch.delenv("SENTRY_DSN", raising=False)

    assert init_sentry(Settings(_env_file=None, environment="test")) is False  # type: ignore[call-arg]
    assert calls == []

    dsn = "https://public0123456789@sentry.example.com/42"
    settings = Settings(_env_file=None, environment="staging", sentry_dsn=dsn)  # type: ignore[call-arg]
    assert init_sentry(settings) is True
    assert len(calls) == 1
    assert calls[0]["dsn"] == dsn
    assert calls[0]["environment"] == "staging"
    assert calls[0]["traces_sample_rate"] == 0
    # Events are scrubbed of configured secrets before they leave.
    event = {"message": f"boom {dsn}", "extra": {"key": settings.secret_key.get_secret_value()}}
    scrubbed = calls[0]["before_send"](event, {})
    assert dsn not in json.dumps(scrubbed)
    assert settings.secret_key.get_secret_value() not in json.dumps(scrubbed)
