"""numpy's BLAS runs single-threaded in every process that imports the engines.

The engines' numpy work already runs in many threads at once (one per activity, one per
download), so OpenBLAS's own thread pool adds nothing but its busy-waiting between calls:
measured, that idle spinning took half a core of a 2-core worker's tail of 200 tracks.
Modules that use numpy import this one first.
"""

from __future__ import annotations

import numpy  # noqa: F401  loads the BLAS library, so its threads can be limited
from threadpoolctl import threadpool_limits

threadpool_limits(limits=1, user_api="blas")
