"""Scriptable local stand-ins for the fal queue and Replicate HTTP APIs.

Each fake is a real HTTP server on 127.0.0.1 (a Starlette app run by uvicorn in a
background thread), so the real client libraries talk to it exactly as they would to the
provider. Tests script failures per endpoint and the fate of the next jobs:

    with FalFake(key="k") as fake:
        fake.script(submit=[Fail(429, times=2, retry_after=7)], poll=[Fail(500)])
        fake.script(jobs=[Job(running_polls=3), Job(fail="model crashed")])
        ...
        assert fake.submissions == 1

Shared pieces live here; the protocol-specific apps are in `fal_server` and
`replicate_server`.
"""

from __future__ import annotations

import asyncio
import functools
import io
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

import numpy as np
import soundfile as sf
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "Audio",
    "Drop",
    "Fail",
    "FailAfter",
    "FakeJob",
    "FakeServer",
    "Huge",
    "Job",
    "Late",
    "Stall",
    "json_error",
    "render_audio",
]


class Audio(StrEnum):
    OK = "ok"  # a tone/noise mix at the requested length
    BROKEN = "broken"  # served as audio/wav but does not decode
    SHORT = "short"  # decodes, but one second long whatever was asked
    SILENT = "silent"  # decodes, right length, all zeros


@dataclass(frozen=True)
class Fail:
    """Answer the next `times` requests to one endpoint with this HTTP error."""

    status: int
    times: int = 1
    retry_after: float | str | None = None  # sent as the Retry-After header
    detail: str | None = None


@dataclass(frozen=True)
class Stall:
    """Hold the next `times` requests to one endpoint for `seconds`, then answer normally."""

    seconds: float
    times: int = 1


@dataclass(frozen=True)
class Drop:
    """Do the work of the next `times` requests (a submit creates its job), then cut the
    connection halfway through the answer: the client never learns the job's id."""

    times: int = 1


@dataclass(frozen=True)
class Late:
    """Do the work, then hold the answer for `seconds` (past the client's timeout)."""

    seconds: float
    times: int = 1


@dataclass(frozen=True)
class FailAfter:
    """Do the work, then answer with this HTTP error (a gateway that lost the answer)."""

    status: int
    times: int = 1
    detail: str | None = None


@dataclass(frozen=True)
class Huge:
    """Do the work, then answer 200 with JSON that never ends (until `size` bytes, so a
    client that reads it all cannot take the machine with it): the answer is lost."""

    times: int = 1
    size: int = 256 * 1024 * 1024


Behaviour = Fail | Stall | Drop | Late | FailAfter | Huge
# Behaviours that strike after the provider acted, where a fault costs the most.
AFTER_ACTING = (Drop, Late, FailAfter, Huge)
_HUGE_CHUNK = 1024 * 1024


def _huge_answer(size: int) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"id": "'
        filler = b"x" * _HUGE_CHUNK
        for _ in range(size // _HUGE_CHUNK):
            yield filler
        yield b'"}'

    return StreamingResponse(body(), media_type="application/json")


class _CutAnswer(Response):
    """Starts the real answer, sends half of it and drops the connection."""

    def __init__(self, answer: Response) -> None:
        super().__init__(answer.body, status_code=answer.status_code, headers=answer.headers)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send(
            {
                "type": "http.response.body",
                "body": self.body[: len(self.body) // 2],
                "more_body": True,
            }
        )
        # The server closes a connection whose app fails mid-answer.
        raise ConnectionAbortedError("fake: answer dropped after the job was created")


@dataclass(frozen=True)
class Job:
    """How the next submitted job behaves.

    A job answers `queued_polls` polls as queued, then `running_polls` as running, and keeps
    running until `running_s` seconds after submission; then it succeeds, or fails with
    `fail`. `duration_s` overrides the audio length (else the length in the request input,
    else the fake's default).
    """

    queued_polls: int = 0
    running_polls: int = 1
    running_s: float = 0.0
    fail: str | None = None
    audio: Audio = Audio.OK
    duration_s: float | None = None
    output_list: bool = False  # Replicate: output as a list of URLs instead of one URL


@dataclass
class FakeJob:
    """Server-side state of one submitted job."""

    id: str
    app: str
    input: dict[str, Any]
    spec: Job
    submitted_at: float = field(default_factory=time.monotonic)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    polls: int = 0
    cancelled: bool = False
    audio_fetches: int = 0

    def advance(self) -> str:
        """Count one poll and return the job's phase: queued, running, failed, succeeded."""
        n = self.polls
        self.polls += 1
        return self.phase(n)

    def phase(self, n: int | None = None) -> str:
        n = self.polls if n is None else n
        if self.cancelled:
            return "cancelled"
        if n < self.spec.queued_polls:
            return "queued"
        running_left = n < self.spec.queued_polls + self.spec.running_polls
        if running_left or time.monotonic() - self.submitted_at < self.spec.running_s:
            return "running"
        return "failed" if self.spec.fail else "succeeded"

    @property
    def done(self) -> bool:
        return self.phase() in ("failed", "succeeded", "cancelled")


@functools.lru_cache(maxsize=32)
def render_audio(kind: Audio, duration_s: float, sample_rate: int) -> bytes:
    """WAV bytes for a fake result (or junk, for Audio.BROKEN). The same for the same
    arguments, so kept: a provider serves a finished file, it does not render it per GET,
    and the benchmarks should not count that rendering against us."""
    if kind is Audio.BROKEN:
        # A RIFF/WAVE header promise followed by noise: sniffers say WAV, decoders choke.
        return b"RIFF\xff\xff\xff\x7fWAVEjunk" + np.random.default_rng(1).bytes(4096)
    if kind is Audio.SHORT:
        duration_s = 1.0
    frames = max(1, round(duration_s * sample_rate))
    if kind is Audio.SILENT:
        signal = np.zeros((frames, 2), dtype=np.float32)
    else:
        t = np.arange(frames, dtype=np.float64) / sample_rate
        tone = 0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.2 * np.sin(2 * np.pi * 330.0 * t)
        noise = 0.05 * np.random.default_rng(0).standard_normal(frames)
        mono = (tone + noise).astype(np.float32)
        signal = np.stack([mono, mono * 0.9], axis=1)
    buf = io.BytesIO()
    sf.write(buf, signal, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def json_error(status: int, detail: str, retry_after: float | str | None = None) -> Response:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    body = {"detail": detail, "status": status, "title": f"HTTP {status}"}
    return JSONResponse(body, status_code=status, headers=headers)


class FakeServer:
    """A Starlette app served by uvicorn on a free port in a daemon thread.

    Subclasses provide `routes()`, `check_auth()` and the protocol handlers; this class
    owns the scripting queues, counters, audio files and the server's lifetime.
    """

    stages: frozenset[str] = frozenset()
    default_duration_s: float = 8.0

    def __init__(self, *, key: str = "test-key", sample_rate: int = 16_000) -> None:
        self.key = key
        self.sample_rate = sample_rate
        self.default_job = Job()
        self.jobs: dict[str, FakeJob] = {}
        self.inputs: list[dict[str, Any]] = []
        self.apps: list[str] = []
        self.cancelled_ids: list[str] = []
        self.submissions = 0  # accepted submissions (jobs created)
        self.submit_attempts = 0  # every submit request that passed auth, failed or not
        self.polls = 0
        self.results = 0
        self.cancels = 0
        self.downloads = 0
        self.auth_failures = 0
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Behaviour]] = {s: deque() for s in self.stages}
        self._job_queue: deque[Job] = deque()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # -- scripting -------------------------------------------------------------------

    def script(self, jobs: Iterable[Job] = (), **stages: Iterable[Behaviour]) -> None:
        """Queue behaviours per endpoint (`submit=[Fail(403)]`) and fates for next jobs."""
        unknown = set(stages) - self.stages
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: {sorted(self.stages)}")
        with self._lock:
            self._job_queue.extend(jobs)
            for stage, behaviours in stages.items():
                for behaviour in behaviours:
                    self._queues[stage].extend([behaviour] * behaviour.times)

    def reset_counters(self) -> None:
        with self._lock:
            self.submissions = self.submit_attempts = self.polls = 0
            self.results = self.cancels = self.downloads = self.auth_failures = 0

    async def scripted(self, stage: str) -> Response | None:
        """Apply the next scripted behaviour for `stage`: an error response, or a delay.

        A behaviour that strikes after acting stays queued for `answer`.
        """
        with self._lock:
            queue = self._queues[stage]
            if queue and isinstance(queue[0], AFTER_ACTING):
                return None
            behaviour = queue.popleft() if queue else None
        if isinstance(behaviour, Stall):
            await asyncio.sleep(behaviour.seconds)
            return None
        if isinstance(behaviour, Fail):
            detail = behaviour.detail or f"scripted {stage} failure ({behaviour.status})"
            return json_error(behaviour.status, detail, behaviour.retry_after)
        return None

    async def answer(self, stage: str, response: Response) -> Response:
        """The answer to a request the fake acted on, unless a fault strikes it now."""
        with self._lock:
            queue = self._queues[stage]
            behaviour = queue.popleft() if queue and isinstance(queue[0], AFTER_ACTING) else None
        if isinstance(behaviour, Drop):
            return _CutAnswer(response)
        if isinstance(behaviour, Late):
            await asyncio.sleep(behaviour.seconds)
        if isinstance(behaviour, FailAfter):
            detail = behaviour.detail or f"scripted {stage} failure after acting"
            return json_error(behaviour.status, detail)
        if isinstance(behaviour, Huge):
            return _huge_answer(behaviour.size)
        return response

    def new_job(self, app: str, payload: dict[str, Any]) -> FakeJob:
        with self._lock:
            spec = self._job_queue.popleft() if self._job_queue else self.default_job
            job = FakeJob(id=str(uuid.uuid4()), app=app, input=payload, spec=spec)
            self.jobs[job.id] = job
            self.inputs.append(payload)
            self.apps.append(app)
            self.submissions += 1
        return job

    def audio_url(self, request: Request, job: FakeJob) -> str:
        return f"{self.base(request)}/files/{job.id}.wav"

    @staticmethod
    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def job_duration(self, job: FakeJob) -> float:
        if job.spec.duration_s is not None:
            return job.spec.duration_s
        for name in ("seconds_total", "duration"):
            value = job.input.get(name)
            if isinstance(value, int | float):
                return float(value)
        return self.default_duration_s

    async def serve_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        job = self.jobs.get(name.removesuffix(".wav"))
        if job is None:
            return json_error(404, "no such file")
        if (failure := await self.scripted("download")) is not None:
            return failure
        self.downloads += 1
        job.audio_fetches += 1
        data = render_audio(job.spec.audio, self.job_duration(job), self.sample_rate)
        return Response(data, media_type="audio/wav")

    # -- lifetime --------------------------------------------------------------------

    def routes(self) -> list[Route]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("fake server is not running")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        app = Starlette(routes=self.routes())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
