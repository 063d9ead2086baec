"""Settings documented in .env.example are the settings the app reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.settings import Settings
from domain.credits import credits_required

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_env_example_documents_every_setting() -> None:
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    expected = {name.upper() for name in Settings.model_fields} - {"VERSION"}
    assert expected <= documented, sorted(expected - documented)
    assert documented <= expected, sorted(documented - expected)


@pytest.mark.parametrize(
    ("env", "chain"),
    [
        ({}, ["synth"]),
        ({"FAL_KEY": "k" * 20}, ["fal"]),
        ({"FAL_KEY": "k" * 20, "REPLICATE_API_TOKEN": "r" * 20}, ["fal", "replicate"]),
        ({"MUSIC_PROVIDERS": "replicate, fal"}, ["replicate", "fal"]),
        ({"MUSIC_PROVIDERS": "fal,replicate", "MUSIC_PROVIDER": "replicate"}, ["replicate", "fal"]),
    ],
)
def test_provider_chain(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], chain: list[str]
) -> None:
    for name in ("FAL_KEY", "REPLICATE_API_TOKEN", "MUSIC_PROVIDERS", "MUSIC_PROVIDER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None).provider_chain == chain  # type: ignore[call-arg]


def test_unknown_provider_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSIC_PROVIDERS", "fal,suno")
    with pytest.raises(ValueError, match="unknown providers"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_pricing_matches_the_runbooks() -> None:
    assert credits_required(30, has_vocals=False) == 5
    assert credits_required(60, has_vocals=False) == 10
    assert credits_required(30, has_vocals=True) == 10
    assert credits_required(5, has_vocals=False) == 1
