"""WAV downloads stream from the FLAC master with no copy of it and bounded concurrency
(issue 24): the download used to copy the whole master to /tmp per request and keep it
while a slow client read.

On the production shape (S3), through a real uvicorn on loopback so that a client can be
slow for real: it reads the headers and a little of the body, then stops reading.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import soundfile as sf

from api.main import create_app
from core.storage import rendition_key
from tests.conftest import Stack, eventually
from tests.covers_support import finished_track
from tests.live_server import LiveServer, bound_socket

LIMITS = {"wav_max_per_link": 1, "wav_max_per_user": 1, "wav_max_concurrent": 1}


async def wav_path(stack: Stack, auth: dict[str, str], track_id: str) -> str:
    link = await stack.http.get(f"/api/tracks/{track_id}/download?format=wav", headers=auth)
    assert link.status_code == 307, link.text
    parts = urlsplit(link.headers["location"])
    return f"{parts.path}?{parts.query}"


async def master_of(stack: Stack, user: uuid.UUID, track_id: str) -> bytes:
    return await stack.storage.get_bytes(rendition_key(user, track_id, "master", "flac"))


def open_files_at_least(size: int) -> list[str]:
    """Regular files this process holds open that are `size` bytes or more."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
            if target.startswith("/") and os.stat(fd).st_size >= size:
                found.append(target)
        except OSError:
            continue
    return found


class SlowClient:
    """A raw HTTP/1.1 GET that reads the headers and then only as much as it is told."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path

    async def __aenter__(self) -> SlowClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=4096)
        request = f"GET {self.path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)
        }
        return self

    async def read(self, size: int) -> bytes:
        return await self.reader.readexactly(size)

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()


def decode(data: bytes) -> np.ndarray:
    samples, _ = sf.read(io.BytesIO(data), dtype="int32")
    return samples


@pytest.mark.parametrize("stack_overrides", [{"free_max_duration_s": 60}])
async def test_a_slow_download_holds_no_copy_and_later_ones_wait_their_turn(
    stack: Stack, stack_overrides: Any
) -> None:
    owner, owner_auth = await stack.user(credits=100)
    long_track = await finished_track(stack, owner_auth, duration_s=60)
    short_track = await finished_track(stack, owner_auth, duration_s=6)
    _, other_auth = await stack.user(credits=20)
    others_track = await finished_track(stack, other_auth, duration_s=6)
    master = await master_of(stack, owner, long_track["id"])
    long_path = await wav_path(stack, owner_auth, long_track["id"])

    with LiveServer(create_app(stack.settings.model_copy(update=LIMITS)), bound_socket()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            async with SlowClient(server.port, long_path) as slow:
                assert slow.status == 200
                size = int(slow.headers["content-length"])
                assert size > len(master) > 4_000_000  # a 60 s, 24-bit stereo WAV
                body = await slow.read(65536)
                await asyncio.sleep(1.0)  # the client stops reading; the server waits
                # Nothing the size of the master is held open: no copy of it anywhere.
                assert open_files_at_least(len(master) // 2) == []

                # The same link again: 429. Another of the owner's tracks: 429 (one per
                # user here). Another user's: 503 (one per process here). Retry-After.
                again = await http.get(long_path)
                assert again.status_code == 429 and "this link" in again.json()["detail"]
                short = await http.get(await wav_path(stack, owner_auth, short_track["id"]))
                assert short.status_code == 429 and "account" in short.json()["detail"]
                other_path = await wav_path(stack, other_auth, others_track["id"])
                other = await http.get(other_path)
                assert other.status_code == 503
                for refused in (again, short, other):
                    assert int(refused.headers["Retry-After"]) >= 1

                # The slow client reads on, to the end: the bytes are a full decode.
                body += await slow.read(size - len(body))
            assert np.array_equal(decode(body), sf.read(io.BytesIO(master), dtype="int32")[0])

            # Its slot is back once it is done: the other user's download goes through.
            async def served() -> bool:
                return (await http.get(other_path)).status_code == 200

            await eventually(served, timeout_s=10)


async def test_a_client_that_hangs_up_mid_download_gives_its_slot_back(stack: Stack) -> None:
    user, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth, duration_s=30)
    path = await wav_path(stack, auth, track["id"])
    master = await master_of(stack, user, track["id"])
    with LiveServer(create_app(stack.settings.model_copy(update=LIMITS)), bound_socket()) as server:
        async with SlowClient(server.port, path) as slow:
            assert slow.status == 200
            await slow.read(4096)
        # Hung up: the next download of the same link is served, whole.
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:

            async def whole() -> bool:
                response = await http.get(path)
                if response.status_code != 200:
                    return False
                assert np.array_equal(
                    decode(response.content), sf.read(io.BytesIO(master), dtype="int32")[0]
                )
                return True

            await eventually(whole, timeout_s=15)
