"""`python -m engines.mastering_process`: a worker's mastering, out of its way.

Mastering is ~150 ms of CPU per 5 s of audio and comes after a track is COMPLETE. In the
worker's own threads it took the GIL and the CPU from the tracks still on their way;
here it runs in a process of its own at the lowest priority, which imports the engines
and nothing else. It ends when its stdin does: when the worker closes it or dies, even
by SIGKILL (after the file in hand, at most).

Requests and answers are pickles framed by their length, on stdin and stdout: a request
is `master_audio`'s keyword arguments, an answer `(MasterReport, bpm)` or the exception.
Only the worker that started the process writes to it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
from typing import IO, Any

from engines.audio import estimate_tempo
from engines.mastering import master_audio

NICE = 19
_LENGTH = struct.Struct("!I")
HEADER_SIZE = _LENGTH.size


def frame(value: Any) -> bytes:
    data = pickle.dumps(value)
    return _LENGTH.pack(len(data)) + data


def frame_length(header: bytes) -> int:
    (length,) = _LENGTH.unpack(header)
    return int(length)


def _read_frame(stream: IO[bytes]) -> Any:
    header = stream.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE:
        raise EOFError
    return pickle.loads(stream.read(frame_length(header)))


def serve() -> None:
    # Where the call does not exist or apply, mastering runs at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    # Answers get stdout's pipe to themselves; anything a library prints goes to stderr.
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    while True:
        try:
            request = _read_frame(requests)
        except EOFError:
            return
        try:
            report = master_audio(**request)
            answer: Any = (report, estimate_tempo(report.renditions[0].path))
        except Exception as exc:  # the worker decides what it means
            answer = exc
        answers.write(frame(answer))
        answers.flush()


if __name__ == "__main__":
    serve()
