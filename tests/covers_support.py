"""Helpers shared by the covers, style and sharing tests."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
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


# --------------------------------------------------------------------------- costly shapes

SVG_HEAD = '<svg xmlns="http://www.w3.org/2000/svg">'
_GRADIENT = '<linearGradient id="g"/>'


def _repeat(unit: str, size: int, head: str = SVG_HEAD, tail: str = "</svg>") -> str:
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


def _deep(size: int) -> str:
    # As deep as allowed, every level's style carrying escapes, comments and url(#id).
    depth = 198
    value = "\\41 u/**/rl(#g) " * ((size - 400 - depth * 16) // depth // 16)
    opening = f'<g style="{value}">' * depth
    return SVG_HEAD + _GRADIENT + opening + "</g>" * depth + "</svg>"


def _nested_styles(size: int) -> str:
    # The issue-24 attack: each <style> re-read the text of every <style> below it.
    depth = 190
    text = "\\41 " * ((size - 200 - depth * 15) // depth // 4)
    return SVG_HEAD + ("<style>" + text) * depth + "</style>" * depth + "</svg>"


def _ids(size: int) -> str:
    count = (size - len(SVG_HEAD) - 6) // 18  # each <g id="i0000000"/> is 18 bytes
    return SVG_HEAD + "".join(f'<g id="i{i:07d}"/>' for i in range(count)) + "</svg>"


# What a user's SVG can make the sanitizer do most of, per byte: each builds a document
# of (at most) the given size in bytes.
COSTLY_SVGS: dict[str, Callable[[int], str]] = {
    "tiny elements": lambda size: _repeat("<g/>", size),
    "rects": lambda size: _repeat('<rect width="1" height="1"/>', size),
    "escapes in a style": lambda size: _repeat(
        "\\41 ", size, SVG_HEAD + "<style>", "</style></svg>"
    ),
    "escapes in attributes": lambda size: _repeat('<rect style="' + "\\41 " * 50 + '"/>', size),
    "max depth with css": _deep,
    "nested styles": _nested_styles,
    "references": lambda size: _repeat(
        '<rect fill="url(#g)" stroke="url(#g)"/>', size, SVG_HEAD + _GRADIENT
    ),
    "comments": lambda size: _repeat(
        '<rect style="/* u/**/rl(#g) \\/* "/>', size, SVG_HEAD + _GRADIENT
    ),
    "ids": _ids,
}
