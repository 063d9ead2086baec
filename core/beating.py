"""Beat while waiting on something that cannot report progress itself (a request in
flight, a decode in a thread), so a dead worker is noticed within the heartbeat timeout
instead of the whole call's timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

EVERY_S = 1.0


@asynccontextmanager
async def beating(beat: Callable[[], None], every_s: float = EVERY_S) -> AsyncIterator[None]:
    async def keep_beating() -> None:
        while True:
            beat()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(keep_beating())
    try:
        yield
    finally:
        task.cancel()
