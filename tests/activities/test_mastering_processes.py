"""Mastering runs off the critical path: in processes of its own at the lowest CPU
priority, so a burst of finished tracks cannot slow the tracks still on their way to
COMPLETE (not by CPU, and not by the worker's GIL). The processes end with the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from activities.mastering_processes import MasteringProcesses, MasteringProcessLost
from engines.audio import AudioDecodeError
from engines.mastering_process import NICE
from tests.conftest import PROJECT_ROOT, eventually
from tests.procfs import alive, children_of, niceness


def _children() -> set[int]:
    return set(children_of(os.getpid()))


@pytest.fixture
def song(tmp_path: Path) -> Path:
    t = np.arange(3 * 44_100) / 44_100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "song.wav"
    sf.write(path, np.stack([tone, tone], axis=1), 44_100)
    return path


async def test_masters_in_a_low_priority_process_of_its_own(song: Path, tmp_path: Path) -> None:
    pool = MasteringProcesses(size=1)
    before = _children()
    try:
        report, _ = await pool.master(source=song, workdir=tmp_path / "out")
        mastering = _children() - before
        assert len(mastering) == 1
        (pid,) = mastering
        assert niceness(pid) == NICE
        assert niceness(os.getpid()) != NICE  # the worker keeps its priority
        assert [r.format for r in report.renditions] == ["flac", "mp3"]
        assert all(r.path.is_file() for r in report.renditions)
        # The same process serves the next request.
        await pool.master(source=song, workdir=tmp_path / "again")
        assert _children() - before == {pid}
        # What the engine raises is raised here.
        (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEjunk" * 64)
        with pytest.raises(AudioDecodeError):
            await pool.master(source=tmp_path / "junk.wav", workdir=tmp_path / "junk")
    finally:
        await pool.aclose()
    assert not alive(pid)


async def test_a_killed_mastering_process_fails_the_request_for_a_retry(
    song: Path, tmp_path: Path
) -> None:
    pool = MasteringProcesses(size=1)
    try:
        await pool.master(source=song, workdir=tmp_path / "first")
        (pid,) = _children()
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        with pytest.raises(MasteringProcessLost):
            await pool.master(source=song, workdir=tmp_path / "second")
        # The next request gets a new process.
        report, _ = await pool.master(source=song, workdir=tmp_path / "third")
        assert report.renditions
    finally:
        await pool.aclose()


async def test_a_cancelled_request_stops_its_process(song: Path, tmp_path: Path) -> None:
    pool = MasteringProcesses(size=1)
    try:
        before = _children()
        mastering = asyncio.ensure_future(pool.master(source=song, workdir=tmp_path / "x"))
        await eventually(lambda: bool(_children() - before), what="a mastering process")
        (pid,) = _children() - before
        mastering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await mastering
        await eventually(lambda: not alive(pid), timeout_s=5, what="the process to end")
    finally:
        await pool.aclose()


KILLED_WORKER = """
import asyncio, os, signal, sys
from pathlib import Path
from activities.mastering_processes import MasteringProcesses

async def main():
    song, out = Path(sys.argv[1]), Path(sys.argv[2])
    pool = MasteringProcesses(size=1)
    await pool.master(source=song, workdir=out)
    pid = int(Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()[0])
    print(pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_a_killed_worker_takes_its_mastering_process_with_it(
    song: Path, tmp_path: Path
) -> None:
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        KILLED_WORKER,
        str(song),
        str(tmp_path / "out"),
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    line = await asyncio.wait_for(worker.stdout.readline(), timeout=60)  # type: ignore[union-attr]
    assert await asyncio.wait_for(worker.wait(), timeout=30) == -signal.SIGKILL
    mastering_pid = int(line)
    await eventually(
        lambda: not alive(mastering_pid), timeout_s=5, what="the mastering process to end"
    )
