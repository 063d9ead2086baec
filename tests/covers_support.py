"""Helpers shared by the covers, style and sharing tests."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from core.models import Plan, Track
from domain.users import create_user
from tests.conftest import Stack

CORPUS = Path(__file__).parent / "engines" / "svg_corpus"
HOSTILE = sorted((CORPUS / "hostile").glob("*.svg"))
BENIGN = sorted((CORPUS / "benign").glob("*.svg"))


async def finished_track(stack: Stack, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    """Create a track, wait for it to complete, and return GET /api/tracks/{id}."""
    created = await stack.create_track(auth, **body)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    response = await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)
    assert response.status_code == 200, response.text
    track: dict[str, Any] = response.json()
    return track


async def user_as_created_now(
    stack: Stack, credits: int = 100, plan: Plan = Plan.FREE
) -> tuple[uuid.UUID, dict[str, str]]:
    """A user made under this stack's settings (style flags included), as the CLI would."""
    user, token = await create_user(
        stack.store.sessions, f"u-{uuid.uuid4().hex[:6]}", credits, plan, settings=stack.settings
    )
    return user.id, {"Authorization": f"Bearer {token}"}


async def track_row(stack: Stack, track_id: str | uuid.UUID) -> Track:
    async with stack.store.sessions() as session:
        track = await session.get(Track, uuid.UUID(str(track_id)))
    assert track is not None
    return track


def decode_png(data: bytes) -> Image.Image:
    """Decode fully (load() reads every pixel), so a truncated file fails here."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image
