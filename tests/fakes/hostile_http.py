"""A loopback HTTP server whose answers are chosen to hurt the client reading them: bodies
that never end, or redirects to addresses the client must not reach.

Plain asyncio (no framework), so it writes exactly what the test says and counts what the
client actually took: bytes sent before the client hung up, connections accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tests.live_server import LOOPBACK

CHUNK = 1024 * 1024
# The server stops by itself after this much of an endless body, so a client that does
# read everything (the bug under test) cannot take the machine with it.
ENDLESS_LIMIT = 512 * 1024 * 1024


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    endless: bool = False  # a chunked body that goes on until the client hangs up
    body: bytes = b""


@dataclass
class HostileServer:
    answers: dict[str, Answer]
    port: int = 0
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    body_bytes_sent: int = 0
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.requests.append(path)
            answer = self.answers.get(path, Answer(404))
            headers = dict(answer.headers)
            if answer.endless:
                headers["Transfer-Encoding"] = "chunked"
            else:
                headers.setdefault("Content-Length", str(len(answer.body)))
            lines = [f"HTTP/1.1 {answer.status} X"] + [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            if not answer.endless:
                writer.write(answer.body)
                await writer.drain()
                return
            chunk = f"{CHUNK:x}\r\n".encode() + b"\0" * CHUNK + b"\r\n"
            while self.body_bytes_sent < ENDLESS_LIMIT:
                writer.write(chunk)
                await writer.drain()
                self.body_bytes_sent += CHUNK
        except (ConnectionError, asyncio.IncompleteReadError):
            self.hung_up.set()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def hostile_server(answers: dict[str, Answer]) -> AsyncIterator[HostileServer]:
    state = HostileServer(answers)
    server = await asyncio.start_server(state.serve, LOOPBACK, 0)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state
