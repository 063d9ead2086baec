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
from engines.mastering import MasterReport
from engines.mastering_process import NICE
from tests.conftest import PROJECT_ROOT, eventually
from tests.procfs import alive, children_of, niceness


def _children() -> set[int]:
    return set(children_of(os.getpid()))


def _song(path: Path, seconds: float = 3) -> Path:
    t = np.arange(int(seconds * 44_100)) / 44_100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    sf.write(path, np.stack([tone, tone], axis=1), 44_100)
    return path


async def _master_once(song: Path, workdir: Path) -> tuple[MasterReport, float | None]:
    pool = MasteringProcesses(size=1)
    try:
        return await pool.master(source=song, workdir=workdir)
    finally:
        await pool.aclose()


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return _song(tmp_path / "song.wav")


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


async def test_a_mastering_process_killed_mid_master_fails_the_request_for_a_retry(
    tmp_path: Path,
) -> None:
    long_song = _song(tmp_path / "long.wav", seconds=60)
    reference, _ = await _master_once(long_song, tmp_path / "reference")
    pool = MasteringProcesses(size=1)
    workdir = tmp_path / "killed"
    before = _children()
    try:
        mastering = asyncio.ensure_future(pool.master(source=long_song, workdir=workdir))
        # The worst moment: it is writing its files and has not answered.
        await eventually(
            lambda: (workdir / ".mastering-scratch.f32").exists(), what="mastering under way"
        )
        (pid,) = _children() - before
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(MasteringProcessLost):
            await mastering
        # Nothing half-written under a final name; the retry (a new process, the same
        # work directory) makes the same files as a run that was never interrupted.
        for rendition in reference.renditions:
            left = workdir / rendition.path.name
            assert not left.exists() or left.read_bytes() == rendition.path.read_bytes()
        retried, _ = await pool.master(source=long_song, workdir=workdir)
        for made, expected in zip(retried.renditions, reference.renditions, strict=True):
            assert made.path.read_bytes() == expected.path.read_bytes()
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
