"""Temporal heartbeats while an activity waits on something that cannot report progress."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from temporalio import activity

from core.beating import EVERY_S, beating


def heartbeating(
    beat: Callable[[], None] = activity.heartbeat, every_s: float = EVERY_S
) -> AbstractAsyncContextManager[None]:
    return beating(beat, every_s)
