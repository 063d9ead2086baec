"""Prometheus metrics of the API and the worker, with the names the alert rules use.

Counters are process-wide and other tests add to them, so every check is on a delta.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import BotoCoreError
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import S3_OPERATIONS, WORKER_REGISTRY, init_worker_series
from core.s3_storage import S3Storage
from core.settings import KNOWN_PROVIDERS
from core.storage import ObjectNotFound
from tests.conftest import PROJECT_ROOT, Stack, eventually
from tests.fakes import Fail
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import fal, hosted_settings, replicate
from tests.fakes.replicate_server import ReplicateFake
from tests.services import free_port

__all__ = ["fal", "replicate"]

Labels = Mapping[str, str]


def sample_value(text: str, name: str, labels: Labels) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def worker_value(name: str, labels: Labels | None = None) -> float:
    return WORKER_REGISTRY.get_sample_value(name, dict(labels or {})) or 0.0


class Deltas:
    """Worker-registry values now minus when this was made."""

    def __init__(self, *series: tuple[str, Labels]) -> None:
        self._before = {self._key(n, lb): worker_value(n, lb) for n, lb in series}

    @staticmethod
    def _key(name: str, labels: Labels) -> tuple[str, tuple[tuple[str, str], ...]]:
        return name, tuple(sorted(labels.items()))

    def __call__(self, name: str, labels: Labels) -> float:
        return worker_value(name, labels) - self._before[self._key(name, labels)]


COMPLETE_SHORT = {"outcome": "complete", "length": "short"}
SYNTH_OK = {"provider": "synth", "outcome": "ok", "error_code": ""}


async def scrape_api(stack: Stack) -> str:
    response = await stack.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# --------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------
async def test_api_counts_requests_by_route_template(stack: Stack) -> None:
    before = await scrape_api(stack)
    _, auth = await stack.user()
    created = await stack.create_track(auth)
    track_id = created["track_id"]
    assert (await stack.http.get(f"/api/tracks/{track_id}", headers=auth)).status_code == 200
    stray = f"/no-such-page-{uuid.uuid4().hex}"
    assert (await stack.http.get(stray)).status_code == 404
    await stack.wait_for_job(created["job_id"], auth)
    after = await scrape_api(stack)

    def delta(name: str, labels: Labels) -> float:
        return sample_value(after, name, labels) - sample_value(before, name, labels)

    created_201 = {"method": "POST", "route": "/api/tracks", "status": "201"}
    assert delta("http_requests_total", created_201) >= 1
    # The template, not the id: one series however many tracks there are.
    read = {"method": "GET", "route": "/api/tracks/{track_id}", "status": "200"}
    assert delta("http_requests_total", read) >= 1
    assert track_id not in after
    # A path no route knows is counted under one bounded label value.
    assert delta("http_requests_total", {"route": "unmatched", "status": "404"}) >= 1
    assert stray not in after
    timed = {"method": "POST", "route": "/api/tracks"}
    assert delta("http_request_duration_seconds_count", timed) >= 1


# --------------------------------------------------------------------------------------
# Worker (in-process: the test reads its registry directly)
# --------------------------------------------------------------------------------------
async def test_worker_records_a_complete_track(stack: Stack) -> None:
    deltas = Deltas(
        ("job_duration_seconds_count", COMPLETE_SHORT),
        ("job_queue_latency_seconds_count", {}),
        ("provider_attempts_total", SYNTH_OK),
    )
    _, auth = await stack.user()
    created = await stack.create_track(auth, duration_s=6)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job

    assert deltas("job_duration_seconds_count", COMPLETE_SHORT) == 1
    assert deltas("job_queue_latency_seconds_count", {}) == 1
    # Submit, await and the audio check each count one attempt.
    assert deltas("provider_attempts_total", SYNTH_OK) >= 1


def test_alerting_series_exist_before_the_first_error() -> None:
    init_worker_series()
    # Present (if zero), so rate() and increase() see the step when the first one fails.
    for operation in S3_OPERATIONS:
        labels = {"operation": operation}
        assert WORKER_REGISTRY.get_sample_value("s3_errors_total", labels) is not None
    for provider in KNOWN_PROVIDERS:
        for code in ("http_401", "http_403"):
            labels = {"provider": provider, "outcome": "error", "error_code": code}
            assert WORKER_REGISTRY.get_sample_value("provider_attempts_total", labels) is not None


@pytest.fixture
def hosted_overrides(fal: FalFake, replicate: ReplicateFake) -> dict[str, Any]:
    return hosted_settings(fal, replicate, submit_max_attempts=2, poll_max_attempts=2)


class TestHostedProviders:
    @pytest.fixture
    def stack_overrides(self, hosted_overrides: dict[str, Any]) -> dict[str, Any]:
        return hosted_overrides

    async def test_fal_403_counts_an_auth_error_and_a_fallback(
        self, stack: Stack, fal: FalFake, replicate: ReplicateFake
    ) -> None:
        fal_403 = {"provider": "fal", "outcome": "error", "error_code": "http_403"}
        replicate_ok = {"provider": "replicate", "outcome": "ok", "error_code": ""}
        fallback = {"from_provider": "fal", "to_provider": "replicate"}
        deltas = Deltas(
            ("provider_attempts_total", fal_403),
            ("provider_attempts_total", replicate_ok),
            ("provider_fallbacks_total", fallback),
            ("job_duration_seconds_count", COMPLETE_SHORT),
        )
        fal.script(submit=[Fail(403, detail="key lacks scope")])
        _, auth = await stack.user()
        created = await stack.create_track(auth, duration_s=10)
        job = await stack.wait_for_job(created["job_id"], auth)
        assert job["status"] == "COMPLETE", job

        assert deltas("provider_attempts_total", fal_403) == 1  # a 403 is not retried
        assert deltas("provider_fallbacks_total", fallback) == 1
        assert deltas("provider_attempts_total", replicate_ok) >= 1
        assert deltas("job_duration_seconds_count", COMPLETE_SHORT) == 1

    async def test_a_failed_job_is_observed_as_failed(
        self, stack: Stack, fal: FalFake, replicate: ReplicateFake
    ) -> None:
        failed = {"outcome": "failed", "length": "short"}
        deltas = Deltas(("job_duration_seconds_count", failed))
        fal.script(submit=[Fail(401)])
        replicate.script(submit=[Fail(401)])
        _, auth = await stack.user()
        created = await stack.create_track(auth, duration_s=10)
        job = await stack.wait_for_job(created["job_id"], auth)
        assert job["status"] == "FAILED", job
        assert deltas("job_duration_seconds_count", failed) == 1


# --------------------------------------------------------------------------------------
# S3 errors
# --------------------------------------------------------------------------------------
def s3_errors(operation: str) -> float:
    return worker_value("s3_errors_total", {"operation": operation})


async def test_s3_errors_are_counted_per_operation(s3: S3Storage) -> None:
    before = {op: s3_errors(op) for op in S3_OPERATIONS}
    await s3.put_bytes("present.txt", b"hello", "text/plain")
    assert await s3.get_bytes("present.txt") == b"hello"
    # The expected 404 of exists() is an answer, not an error.
    assert await s3.exists("missing.txt") is False
    with pytest.raises(ObjectNotFound):
        await s3.get_bytes("missing.txt")
    assert s3_errors("PutObject") == before["PutObject"]
    assert s3_errors("HeadObject") == before["HeadObject"]
    assert s3_errors("GetObject") == before["GetObject"] + 1


async def test_unreachable_s3_counts_connection_errors() -> None:
    storage = S3Storage(
        bucket="nowhere",
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key="a" * 12,
        secret_key="s" * 24,
        region="us-east-1",
    )
    before = s3_errors("PutObject")
    async with storage:
        with pytest.raises(BotoCoreError):
            await storage.put_bytes("k.txt", b"x", "text/plain")
    assert s3_errors("PutObject") == before + 1


# --------------------------------------------------------------------------------------
# The worker process's /metrics endpoint
# --------------------------------------------------------------------------------------
class TestWorkerEndpoint:
    @pytest.fixture
    def start_worker(self) -> bool:
        return False  # the worker is a real process here

    @pytest.fixture
    def worker_process(
        self, stack: Stack, tmp_path: Path
    ) -> Iterator[Callable[[], tuple[str, str]]]:
        port = free_port()
        log_path = tmp_path / "worker.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, str(PROJECT_ROOT / "worker.py")],
                env={**stack.env, "WORKER_METRICS_PORT": str(port)},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                yield lambda: (f"http://127.0.0.1:{port}/metrics", log_path.read_text())
            finally:
                process.terminate()
                process.wait(timeout=60)

    async def test_one_scrape_has_job_and_temporal_sdk_series(
        self, stack: Stack, worker_process: Callable[[], tuple[str, str]]
    ) -> None:
        url, _ = worker_process()

        async def scrape() -> str:
            def get() -> str:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return str(response.read().decode())

            return await asyncio.to_thread(get)

        async def is_up() -> bool:
            try:
                await scrape()
            except OSError:
                return False
            return True

        try:
            await eventually(is_up, timeout_s=60, what="the worker's metrics endpoint")
            _, auth = await stack.user()
            created = await stack.create_track(auth, duration_s=6)
            job = await stack.wait_for_job(created["job_id"], auth, timeout_s=90)
            assert job["status"] == "COMPLETE", job

            async def has_everything() -> bool:
                text = await scrape()
                return "job_duration_seconds_bucket" in text and "\ntemporal_" in text

            await eventually(has_everything, timeout_s=30, what="job and SDK series")
        except AssertionError:
            print(worker_process()[1][-4000:])
            raise
        text = await scrape()
        assert sample_value(text, "job_duration_seconds_count", COMPLETE_SHORT) == 1
        assert sample_value(text, "job_queue_latency_seconds_count", {}) == 1
        temporal = {
            family.name
            for family in text_string_to_metric_families(text)
            if family.name.startswith("temporal_")
        }
        assert temporal, "no Temporal SDK series"
        # The SDK's worker metrics, e.g. workflow task and activity execution counts.
        assert any("activity" in name or "workflow" in name for name in temporal), temporal
        # The endpoint speaks plain HTTP to anything, as Prometheus needs.
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
        assert response.status_code == 200
