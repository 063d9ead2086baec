"""Heartbeats while an activity waits on something that cannot report progress itself
(a request in flight, a decode in a thread), so a dead worker is noticed within the
heartbeat timeout instead of the activity's whole start-to-close timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from temporalio import activity

EVERY_S = 1.0


@asynccontextmanager
async def heartbeating(
    beat: Callable[[], None] = activity.heartbeat, every_s: float = EVERY_S
) -> AsyncIterator[None]:
    async def keep_beating() -> None:
        while True:
            beat()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(keep_beating())
    try:
        yield
    finally:
        task.cancel()
