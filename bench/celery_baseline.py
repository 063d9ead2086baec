"""A plain task-queue baseline: the old system's shape (Celery + Redis), the same work.

One Celery task per track does, in order: create a Replicate prediction, poll it until it
succeeded, download the WAV, write it to a local folder, check it with our own
engines.audio (decode, peak, RMS, loudness, tempo; reject silence and a wrong length), draw
our SVG cover (engines.cover_art) into the folder, and record QUEUED -> RENDERING -> COMPLETE with
timestamps in SQLite (the producer inserts QUEUED, the task updates). Completion is read
from SQLite, as our bench reads our database, never from the result backend.

`run_baseline` brings up its own redis-server and a Celery worker (prefork, Celery's
default pool: a track holds a pool process for its whole life, provider wait included,
which is the property being compared) and tears both down.

    .venv/bin/python -m bench.celery_baseline [--sequential 20] [--burst 200]
                                              [--processes 1]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery
from celery import __version__ as celery_version

from bench.procs import tree_status
from core.contracts import AudioInfo
from engines.audio import analyze, quality_problem
from engines.cover_art import render_cover_svg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TASK_NAME = "bench.celery_baseline.render_track"
# A pinned version goes to POST /v1/predictions (the fake takes any; `owner/name:` names
# the model in its records). The hash is made up.
MODEL_VERSION = "meta/musicgen:" + "0" * 63 + "1"
DURATION_S = 5
POLL_INTERVAL_S = 2.0  # SoundFoundry's default POLL_INTERVAL_S
SILENCE_DBFS = -60.0  # the same floor as engines.audio.quality_problem
WAIT_S = 300.0
START_S = 60.0
MB = 1024 * 1024

# The worker reads its configuration from the environment run_baseline gives it.
app = Celery(
    "celery_baseline",
    broker=os.environ.get("BASELINE_BROKER_URL"),
    backend=os.environ.get("BASELINE_BACKEND_URL"),
)
app.conf.broker_connection_retry_on_startup = True  # silences a Celery 5.x warning


# ------------------------------------------------------------------------------------
# The task (runs in the worker's pool processes)
# ------------------------------------------------------------------------------------
_per_process: dict[str, Any] = {}


def _open_db(path: Path) -> sqlite3.Connection:
    # Autocommit, WAL and busy_timeout as core.db sets them: producer and workers are
    # separate processes writing one file.
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


def _resources() -> tuple[httpx.Client, sqlite3.Connection]:
    """This process's HTTP client and database connection, opened on first use: prefork
    children are forked, and neither a socket nor a SQLite handle may cross a fork."""
    if _per_process.get("pid") != os.getpid():
        workdir = Path(os.environ["BASELINE_WORKDIR"])
        _per_process.update(
            pid=os.getpid(),
            http=httpx.Client(timeout=15),
            db=_open_db(workdir / "baseline.sqlite3"),
        )
    return _per_process["http"], _per_process["db"]


def _set_state(db: sqlite3.Connection, track_id: str, state: str, error: str = "") -> None:
    column = {"RENDERING": "rendering_at", "COMPLETE": "complete_at", "FAILED": "failed_at"}
    db.execute(
        f"UPDATE tracks SET status = ?, {column[state]} = ?, error = ? WHERE id = ?",
        (state, time.time(), error, track_id),
    )


def _generate(http: httpx.Client, prompt: str) -> bytes:
    base, token = os.environ["BASELINE_FAKE_URL"], os.environ["BASELINE_TOKEN"]
    auth = {"Authorization": f"Bearer {token}"}
    # output_format: what SoundFoundry asks of meta/musicgen, so both fetch WAV.
    body = {
        "version": MODEL_VERSION,
        "input": {"prompt": prompt, "duration": DURATION_S, "output_format": "wav"},
    }
    created = http.post(f"{base}/v1/predictions", json=body, headers=auth)
    created.raise_for_status()
    run_id = created.json()["id"]
    deadline = time.monotonic() + WAIT_S
    # Look at once, then every POLL_INTERVAL_S: with an instant provider no sleep is
    # measured, only the pipeline's own cost.
    while True:
        polled = http.get(f"{base}/v1/predictions/{run_id}", headers=auth)
        polled.raise_for_status()
        prediction = polled.json()
        if prediction["status"] == "succeeded":
            break
        if prediction["status"] in ("failed", "canceled"):
            raise RuntimeError(f"prediction {run_id} {prediction['status']}: {prediction['error']}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"prediction {run_id} not done in {WAIT_S:g} s")
        time.sleep(POLL_INTERVAL_S)
    output = prediction["output"]
    url = output[0] if isinstance(output, list) else output
    # The file host takes no token, like replicate.delivery: do not send it there.
    audio = http.get(url)
    audio.raise_for_status()
    return audio.content


def _check_audio(path: Path) -> AudioInfo:
    """The very check our pipeline runs (engines.audio): decode, loudness, tempo, peaks."""
    info = analyze(path)
    if problem := quality_problem(info, DURATION_S, silence_dbfs=SILENCE_DBFS):
        raise ValueError(problem)
    return info


@app.task(name=TASK_NAME)
def render_track(track_id: str, prompt: str) -> dict[str, float]:
    http, db = _resources()
    workdir = Path(os.environ["BASELINE_WORKDIR"])
    _set_state(db, track_id, "RENDERING")
    try:
        wav = _generate(http, prompt)
        audio = workdir / "audio" / f"{track_id}.wav"
        audio.write_bytes(wav)
        info = _check_audio(audio)
        # Our cover art, drawn by the same function the pipeline uses.
        seed = int.from_bytes(hashlib.sha256(track_id.encode()).digest()[:4], "big")
        (workdir / "covers" / f"{track_id}.svg").write_text(render_cover_svg(prompt, seed, 1))
    except Exception as exc:
        _set_state(db, track_id, "FAILED", error=repr(exc)[:500])
        raise
    _set_state(db, track_id, "COMPLETE")
    return {"peak_dbfs": info.peak_dbfs, "rms_dbfs": info.rms_dbfs}  # kept by the backend


# ------------------------------------------------------------------------------------
# The run (in the bench's process)
# ------------------------------------------------------------------------------------
@dataclass
class BaselineFigures:
    sequential_ms: list[float]  # POST-equivalent (enqueue) -> COMPLETE seen in SQLite
    burst_tracks: int
    burst_s: float  # first enqueue -> last COMPLETE
    burst_p50_s: float  # per-track enqueue -> COMPLETE, median
    worker_peak_rss_mb: float  # sum over the celery worker processes (VmHWM)

    @property
    def burst_tracks_per_s(self) -> float:
        return self.burst_tracks / self.burst_s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _wait_ready(what: str, ready: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_S
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}):\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {START_S:g} s:\n{_tail(log)}")
        time.sleep(0.05)


def _redis_up(port: int) -> bool:
    try:
        with redis.Redis("127.0.0.1", port, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL the process group it leads, so no
    pool child outlives it."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def _enqueue(db: sqlite3.Connection, producer: Celery, prompt: str) -> tuple[str, float]:
    """What a POST does here: insert the QUEUED row, then send the task."""
    track_id, started = str(uuid.uuid4()), time.monotonic()
    db.execute(
        "INSERT INTO tracks (id, prompt, status, queued_at) VALUES (?, ?, 'QUEUED', ?)",
        (track_id, prompt, time.time()),
    )
    producer.send_task(TASK_NAME, args=(track_id, prompt))
    return track_id, started


def _wait_complete(db: sqlite3.Connection, ids: list[str], every_s: float) -> dict[str, float]:
    """When each track was first seen COMPLETE (monotonic); raises on FAILED or timeout."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + WAIT_S
    while len(seen) < len(ids):
        pending = [i for i in ids if i not in seen]
        rows = db.execute(
            "SELECT id, status, error FROM tracks WHERE status IN ('COMPLETE', 'FAILED') "
            f"AND id IN ({','.join('?' * len(pending))})",
            pending,
        ).fetchall()
        now = time.monotonic()
        for track_id, status, error in rows:
            if status == "FAILED":
                raise RuntimeError(f"baseline track {track_id} FAILED: {error}")
            seen[track_id] = now
        if now > deadline:
            raise TimeoutError(
                f"{len(ids) - len(seen)} baseline tracks not COMPLETE in {WAIT_S:g} s"
            )
        time.sleep(every_s)
    return seen


def run_baseline(
    fake_url: str,
    token: str,
    *,
    sequential: int = 20,
    burst: int = 200,
    processes: int = 1,
    workdir: Path,
) -> BaselineFigures:
    for folder in ("audio", "covers"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    db = _open_db(workdir / "baseline.sqlite3")
    db.execute(
        "CREATE TABLE IF NOT EXISTS tracks (id TEXT PRIMARY KEY, prompt TEXT NOT NULL, "
        "status TEXT NOT NULL, queued_at REAL, rendering_at REAL, complete_at REAL, "
        "failed_at REAL, error TEXT)"
    )
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
        ),
        "BASELINE_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "BASELINE_BACKEND_URL": f"redis://127.0.0.1:{port}/1",
        "BASELINE_WORKDIR": str(workdir),
        "BASELINE_FAKE_URL": fake_url.rstrip("/"),
        "BASELINE_TOKEN": token,
    }
    redis_log, worker_log = workdir / "redis.log", workdir / "worker.log"
    server = worker = None
    # No result backend here: completion is read from SQLite, and a Redis backend would
    # subscribe the producer to every task's result channel.
    producer = Celery("baseline_producer", broker=env["BASELINE_BROKER_URL"], set_as_current=False)
    try:
        redis_cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        with redis_log.open("wb") as out:
            server = subprocess.Popen(
                [*redis_cmd, "--save", "", "--appendonly", "no"],
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_ready("redis-server", lambda: _redis_up(port), server, redis_log)
        celery_cmd = [sys.executable, "-m", "celery", "-A", "bench.celery_baseline", "worker"]
        pool = [f"--concurrency={processes}", "--pool=prefork", "--loglevel=WARNING"]
        with worker_log.open("wb") as out:
            worker = subprocess.Popen(
                [*celery_cmd, *pool, f"--hostname=baseline-{port}@%h"],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own group: a Ctrl-C reaches it only through _stop, and _stop can
                # kill the pool children with it.
                start_new_session=True,
            )
        _wait_ready(
            "celery worker", lambda: bool(producer.control.ping(timeout=0.5)), worker, worker_log
        )

        sequential_ms = []
        for i in range(sequential):
            track_id, started = _enqueue(db, producer, f"baseline seq {i}")
            seen = _wait_complete(db, [track_id], 0.005)
            sequential_ms.append(1000 * (seen[track_id] - started))

        enqueued = dict(_enqueue(db, producer, f"baseline burst {i}") for i in range(burst))
        # Read every 0.1 s, as bench.pipeline reads ours during its burst.
        seen = _wait_complete(db, list(enqueued), 0.1)
        first = min(enqueued.values())
        return BaselineFigures(
            sequential_ms=sequential_ms,
            burst_tracks=burst,
            burst_s=max(seen.values()) - first,
            burst_p50_s=statistics.median(seen[t] - enqueued[t] for t in enqueued),
            worker_peak_rss_mb=tree_status(worker.pid, "VmHWM") / MB,
        )
    finally:
        producer.close()
        _stop(worker)
        _stop(server)
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--processes", type=int, default=1, help="worker --concurrency")
    args = parser.parse_args()
    if args.sequential < 1 or args.burst < 1 or args.processes < 1:
        parser.error("need --sequential, --burst and --processes >= 1")
    # Here, not at the top: the worker imports this module and needs none of these.
    from bench.faults import REPLICATE_TOKEN
    from tests.fakes import Job
    from tests.fakes.replicate_server import ReplicateFake

    fake = ReplicateFake(key=REPLICATE_TOKEN)
    fake.default_job = Job(running_polls=0)  # succeeded at the first look
    with fake, tempfile.TemporaryDirectory(prefix="sf-celery-") as tmp:
        figures = run_baseline(
            fake.url,
            REPLICATE_TOKEN,
            sequential=args.sequential,
            burst=args.burst,
            processes=args.processes,
            workdir=Path(tmp),
        )
        predictions = fake.submissions
    seq = sorted(figures.sequential_ms)
    print(f"celery {celery_version}, prefork --concurrency={args.processes}, redis broker")
    rows = {
        "sequential enqueue -> COMPLETE": f"p50 {statistics.median(seq):.0f} ms, "
        f"min {seq[0]:.0f}, max {seq[-1]:.0f} ({len(seq)} tracks)",
        f"burst of {figures.burst_tracks}": f"{figures.burst_s:.1f} s, "
        f"{figures.burst_tracks_per_s:.1f} tracks/s, "
        f"enqueue -> COMPLETE p50 {figures.burst_p50_s:.1f} s",
        "worker peak RSS (sum of VmHWM)": f"{figures.worker_peak_rss_mb:.0f} MB",
        "predictions created at the fake": str(predictions),
    }
    for label, figure in rows.items():
        print(f"{label:<34}{figure}")


if __name__ == "__main__":
    main()
