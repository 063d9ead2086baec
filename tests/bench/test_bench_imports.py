"""Every benchmark still imports: they run by hand, so nothing else would notice a name
they use moving away."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

pytestmark = pytest.mark.unit

MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__, "bench."))
# Installed with `--extra bench` only.
OPTIONAL = {"bench.celery_baseline": "celery"}


@pytest.mark.parametrize("module", MODULES)
def test_the_benchmark_imports(module: str) -> None:
    if module in OPTIONAL:
        pytest.importorskip(OPTIONAL[module])
    importlib.import_module(module)
