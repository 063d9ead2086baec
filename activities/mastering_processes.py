"""The worker's side of `engines.mastering_process`: a few mastering processes, started on
first use, each mastering one file at a time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import engines
from engines.mastering import MasterReport
from engines.mastering_process import HEADER_SIZE, frame, frame_length

# Where `python -m engines.mastering_process` finds the engines, wherever the worker runs.
_ENGINES_HOME = str(Path(engines.__file__).resolve().parent.parent)


class MasteringProcessLost(Exception):
    """The mastering process ended mid-request (killed, out of memory): worth a retry."""


class MasteringProcesses:
    def __init__(self, size: int) -> None:
        self._size = size
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[asyncio.subprocess.Process] = []

    async def master(self, **request: Any) -> tuple[MasterReport, float | None]:
        """`engines.mastering.master_audio(**request)` and the master's tempo, in a
        mastering process; its exceptions are raised here."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        async with self._slots:
            process = self._idle.pop() if self._idle else await self._start()
            try:
                answer = await self._ask(process, request)
            except BaseException:
                # Cancelled or broken mid-request: stop it rather than wait for its answer.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                raise
            self._idle.append(process)
        if isinstance(answer, BaseException):
            raise answer
        report, bpm = answer
        return report, bpm

    async def aclose(self) -> None:
        """End the idle processes (the busy ones end with their requests' cancellation)."""
        idle, self._idle = self._idle, []
        for process in idle:
            if process.stdin is not None:
                process.stdin.close()  # end of requests: it exits
        for process in idle:
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except TimeoutError:
                process.kill()

    async def _start(self) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ENGINES_HOME, env.get("PYTHONPATH")]))
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engines.mastering_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )

    @staticmethod
    async def _ask(process: asyncio.subprocess.Process, request: dict[str, Any]) -> Any:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(frame(request))
            await process.stdin.drain()
            header = await process.stdout.readexactly(HEADER_SIZE)
            return pickle.loads(await process.stdout.readexactly(frame_length(header)))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise MasteringProcessLost(
                f"the mastering process ended mid-request (exit {process.returncode})"
            ) from exc
