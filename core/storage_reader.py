"""A stored object as a seekable binary file for synchronous readers, a block at a time.

Decoders such as libsndfile want a file they can read and seek from their own thread;
storage is async. `StorageReader` runs on a worker thread and asks the event loop for one
block (`Storage.read_range`) whenever a read leaves the block it holds, so streaming an
object of any size holds one block in memory and nothing on disk.
"""

from __future__ import annotations

import asyncio
import io
import os
from typing import TYPE_CHECKING

from core.storage import Storage

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

BLOCK = 1024 * 1024


class StorageReader(io.RawIOBase):
    """Read-only file over `key`; use it from a thread other than `loop`'s (it blocks on
    the loop for every block)."""

    def __init__(
        self,
        storage: Storage,
        key: str,
        size: int,
        loop: asyncio.AbstractEventLoop,
        *,
        block: int = BLOCK,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__()
        self.key, self.size = key, size
        self._storage, self._loop = storage, loop
        self._block, self._timeout_s = block, timeout_s
        self._position = 0
        self._held_at, self._held = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._position < self.size:
            offset = self._position - self._held_at
            if not 0 <= offset < len(self._held):
                self._fetch()
                offset = 0
            piece = self._held[offset : offset + len(view) - filled]
            view[filled : filled + len(piece)] = piece
            filled += len(piece)
            self._position += len(piece)
        return filled

    def _fetch(self) -> None:
        length = min(self._block, self.size - self._position)
        pending = asyncio.run_coroutine_threadsafe(
            self._storage.read_range(self.key, self._position, length), self._loop
        )
        data = pending.result(self._timeout_s)
        if not data:
            raise OSError(f"{self.key} ended at {self._position} of {self.size} bytes")
        self._held_at, self._held = self._position, data
