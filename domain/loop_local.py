"""In-process coordination state (counters, shared flights), one instance per event loop.

Such state is changed only on its loop's thread, and must not outlive the loop: a test
runs one loop per test, and a count left by a loop that closed mid-request would
otherwise hold a slot forever.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar, cast

_T = TypeVar("_T")
_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, object]] = (
    weakref.WeakKeyDictionary()
)


def loop_local(key: Hashable, make: Callable[[], _T]) -> _T:
    """The running loop's instance for `key`, made by `make` on first use."""
    instances = _registry.setdefault(asyncio.get_running_loop(), {})
    if key not in instances:
        instances[key] = make()
    return cast(_T, instances[key])
