"""The engines keep numpy's BLAS to one thread: their callers already run them in many
threads at once, and OpenBLAS's own pool only busy-waits between their calls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.unit

REPORT = """
import json, sys, threadpoolctl
import {module}
print(json.dumps([p["num_threads"] for p in threadpoolctl.threadpool_info()
                  if p["user_api"] == "blas"]))
"""


@pytest.mark.parametrize("module", ["engines.audio", "engines.mastering", "engines.synth"])
def test_importing_an_engine_leaves_blas_single_threaded(module: str) -> None:
    # A fresh interpreter: the worker imports the audio check alone, the API mastering.
    out = subprocess.run(
        [sys.executable, "-c", REPORT.format(module=module)],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "4"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert threads, "numpy's BLAS was not loaded"
    assert threads == [1] * len(threads)
