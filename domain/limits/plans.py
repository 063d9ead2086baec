"""What each plan allows: the longest track and the per-user rate limits.

Every number comes from settings, so operators tune plans without a release. The API
enforces them (api/routes/tracks.py, api/rate_limit.py) and shows them on GET /api/me.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from core.models import Plan
from core.settings import Settings
from domain.errors import Forbidden

RateLimitName = Literal["create_track", "cover_save", "series_create"]
RATE_LIMIT_NAMES: tuple[RateLimitName, ...] = get_args(RateLimitName)

# How a limit reads in a 429's detail: "at most 5 tracks created per 60 s".
_WHAT: dict[RateLimitName, str] = {
    "create_track": "tracks created",
    "cover_save": "cover saves",
    "series_create": "style series created",
}


@dataclass(frozen=True)
class RateRule:
    name: RateLimitName
    limit: int
    window_s: int

    @property
    def what(self) -> str:
        return _WHAT[self.name]


def max_duration_s(settings: Settings, plan: Plan) -> int:
    return settings.pro_max_duration_s if plan == Plan.PRO else settings.free_max_duration_s


def rate_rule(settings: Settings, name: RateLimitName, plan: Plan) -> RateRule:
    if name == "create_track":
        limit = (
            settings.rate_limit_create_track_pro
            if plan == Plan.PRO
            else settings.rate_limit_create_track_free
        )
        return RateRule(name, limit, settings.rate_limit_window_s)
    if name == "cover_save":
        return RateRule(name, settings.rate_limit_cover_save, settings.rate_limit_window_s)
    if name == "series_create":
        return RateRule(
            name, settings.rate_limit_series_create, settings.rate_limit_series_window_s
        )
    raise ValueError(f"unknown rate limit {name!r}; known: {list(RATE_LIMIT_NAMES)}")


class DurationOverPlan(Forbidden):
    def __init__(self, plan: Plan, asked_s: int, max_s: int, pro_max_s: int) -> None:
        message = f"{plan.value} plan tracks are at most {max_s} s (asked {asked_s} s)"
        if plan != Plan.PRO and pro_max_s > max_s:
            message += f"; pro allows up to {pro_max_s} s"
        super().__init__(message)


def check_duration(settings: Settings, plan: Plan, duration_s: int) -> None:
    """Raise DurationOverPlan when the plan does not allow a track this long."""
    cap = max_duration_s(settings, plan)
    if duration_s > cap:
        raise DurationOverPlan(plan, duration_s, cap, settings.pro_max_duration_s)
