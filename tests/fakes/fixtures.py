"""Pytest fixtures that run the fal and Replicate fakes and point a stack at them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.fal_server import FalFake
from tests.fakes.replicate_server import ReplicateFake

FAL_KEY = "fal-test-key-0123456789abcdef"
REPLICATE_TOKEN = "r8_test-token-0123456789abcdef"


@pytest.fixture
def fal() -> Iterator[FalFake]:
    with FalFake(key=FAL_KEY) as fake:
        yield fake


@pytest.fixture
def replicate() -> Iterator[ReplicateFake]:
    with ReplicateFake(key=REPLICATE_TOKEN) as fake:
        yield fake


@pytest.fixture
def extra_overrides() -> dict[str, Any]:
    """Per-test settings on top of the providers' (parametrize to change)."""
    return {}


def hosted_settings(fal: FalFake, replicate: ReplicateFake, **extra: Any) -> dict[str, Any]:
    """Settings that point the provider chain fal -> replicate at the fakes."""
    return {
        "music_providers": ["fal", "replicate"],
        "fal_key": FAL_KEY,
        "replicate_api_token": REPLICATE_TOKEN,
        "fal_queue_url": fal.url,
        "replicate_base_url": replicate.url,
        # The fakes serve audio on loopback, which downloads refuse unless it is named.
        "provider_download_allowed_hosts": ["127.0.0.1"],
        "submit_max_attempts": 3,
        "poll_max_attempts": 3,
        # A lost submit answer is looked for this long before it is called ambiguous.
        "submit_resolve_window_s": 1.5,
        # Tests that run fal without webhooks accept what a lost fal answer costs.
        "fal_without_webhooks": True,
        **extra,
    }


@pytest.fixture
def stack_overrides(
    fal: FalFake, replicate: ReplicateFake, extra_overrides: dict[str, Any]
) -> dict[str, Any]:
    return hosted_settings(fal, replicate, **extra_overrides)
