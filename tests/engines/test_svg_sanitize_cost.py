"""The sanitizer's work grows linearly with a document's size, whatever its shape (issue 24).

A 200 KB cover of nested <style> elements used to take 23 s of CPU: each stylesheet
re-read the text of every one below it, so the work grew with depth times size. Here
every costly shape we know (tests/covers_support.COSTLY_SVGS) is measured at a quarter
of the size limit and at the limit: the CPU time may grow about as much as the size, and
no shape may cost much more per byte than the plainest costly one (many tiny elements).
CPU time of this process is measured (the smaller input's best of two), so other load on
the machine shifts the figures little, with the cyclic garbage collector off as in the
sandbox's child; the bounds leave room for caches.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable

import pytest

from engines.svg_sanitize import DEFAULT_MAX_BYTES, SvgRejected, sanitize_svg
from tests.covers_support import COSTLY_SVGS

LIMIT = DEFAULT_MAX_BYTES
# Linear work grows 4x from a quarter of the limit to the limit (a little more with
# caches and the collector); work of depth x size grows with the depth instead.
GROWTH_BOUND = 8.0
# How much more one shape may cost than many tiny elements at the limit.
SHAPE_BOUND = 2.0


def _cpu_s(make: Callable[[int], str], size: int, tries: int = 1) -> float:
    svg = make(size)
    best = float("inf")
    for _ in range(tries):
        # As in the render sandbox's child, which sanitizes with the cyclic collector
        # off: when it would run depends on what ran before, not on this document.
        gc.collect()
        gc.disable()
        start = time.process_time()
        with contextlib.suppress(SvgRejected):  # refusing is measured the same way
            sanitize_svg(svg)
        best = min(best, time.process_time() - start)
        gc.enable()
    return best


@pytest.fixture(scope="module")
def tiny_at_limit_s() -> float:
    return _cpu_s(COSTLY_SVGS["tiny elements"], LIMIT)


@pytest.mark.parametrize("shape", sorted(COSTLY_SVGS))
def test_work_grows_linearly_with_size_for_every_costly_shape(
    shape: str, tiny_at_limit_s: float
) -> None:
    make = COSTLY_SVGS[shape]
    assert len(make(LIMIT).encode()) <= LIMIT  # the largest input the limit allows
    quarter, full = _cpu_s(make, LIMIT // 4, tries=2), _cpu_s(make, LIMIT)
    assert full <= GROWTH_BOUND * quarter + 0.05, (shape, quarter, full)
    assert full <= SHAPE_BOUND * tiny_at_limit_s + 0.05, (shape, full, tiny_at_limit_s)


def test_a_style_holding_elements_is_refused_at_once() -> None:
    svg = COSTLY_SVGS["nested styles"](LIMIT)
    start = time.process_time()
    with pytest.raises(SvgRejected, match="may contain only CSS text"):
        sanitize_svg(svg)
    assert time.process_time() - start < 0.5
