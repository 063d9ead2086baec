"""What a track costs in credits.

credits = ceil(duration_s / 30 * 5), doubled when the track has vocals.
So a 30 s instrumental costs 5 (as in the runbooks), 60 s costs 10, 30 s with vocals 10.
"""

from __future__ import annotations

import math

CREDITS_PER_30S = 5
VOCALS_MULTIPLIER = 2


def credits_required(duration_s: int, has_vocals: bool) -> int:
    base = math.ceil(duration_s * CREDITS_PER_30S / 30)
    return base * VOCALS_MULTIPLIER if has_vocals else base
