"""Mastering runs off the critical path: at the lowest CPU priority, on its own threads,
so a burst of finished tracks cannot slow the tracks still on their way to COMPLETE."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from activities.assets import MASTERING_NICE, AssetActivities
from core.db import create_engine, session_factory
from core.settings import Settings
from core.storage import build_storage
from domain.tracks.jobs import JobStore


def _nice_here() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_mastering_threads_run_at_the_lowest_priority_and_nothing_else_does(
    tmp_path: Path,
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="test",
        storage_local_dir=tmp_path,
        worker_max_concurrent_mastering=2,
    )
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    store = JobStore(session_factory(engine))
    assets = AssetActivities(store, build_storage(settings), settings)
    before = _nice_here()
    niceness = await asyncio.gather(*(assets._in_background(_nice_here) for _ in range(4)))
    assert set(niceness) == {MASTERING_NICE}
    # The event loop and the default executor (checks, downloads) keep their priority.
    assert _nice_here() == before
    assert await asyncio.to_thread(_nice_here) == before
    await engine.dispose()
