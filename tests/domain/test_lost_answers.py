"""What a lost submit answer costs, and the worker's refusal to run fal where a lost
answer can never be found (no provider webhooks, no listing) unless the operator opts in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from core.settings import Settings
from domain.providers.lost_answers import fal_without_webhooks_problem, lost_answer_costs
from tests.domain.conftest import domain_settings


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "fal_key": SecretStr("fal-key"),
        "replicate_api_token": SecretStr("r8_token"),
        "music_providers": ["fal", "replicate"],
        **overrides,
    }
    return domain_settings(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", tmp_path, **values)


def test_fal_without_webhooks_is_refused_unless_the_operator_opts_in(tmp_path: Path) -> None:
    problem = fal_without_webhooks_problem(settings(tmp_path))
    assert problem is not None and "FAL_WITHOUT_WEBHOOKS" in problem
    assert fal_without_webhooks_problem(settings(tmp_path, fal_without_webhooks=True)) is None
    assert fal_without_webhooks_problem(settings(tmp_path, provider_webhooks_enabled=True)) is None
    # Without fal in the chain (or without its key) a lost answer can always be found.
    assert fal_without_webhooks_problem(settings(tmp_path, music_providers=["replicate"])) is None
    assert fal_without_webhooks_problem(settings(tmp_path, fal_key=None)) is None


def test_the_cost_of_a_lost_answer_per_provider(tmp_path: Path) -> None:
    off = lost_answer_costs(settings(tmp_path, fal_without_webhooks=True))
    assert "billed too" in off["fal"] and "listing" in off["replicate"]
    on = lost_answer_costs(settings(tmp_path, provider_webhooks_enabled=True))
    assert on == {"fal": "found by its webhook: one paid job"} | {
        "replicate": "found by its webhook: one paid job"
    }


def test_the_worker_command_refuses_to_start(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "ENVIRONMENT": "development",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        "FAL_KEY": "fal-key",
        "MUSIC_PROVIDERS": "fal",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "soundfoundry", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "refusing to start: fal is in the provider chain" in refused.stderr
