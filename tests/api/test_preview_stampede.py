"""Link-preview stampedes: a fresh share's PNG is drawn once however many crawlers ask at
the same instant, and past the queue's bound they get 503 with Retry-After (issue 24).

On the embedded default (local files: two drawings writing one key at once is what used
to tear). The cover is one that takes a second or more to draw, so every request of a
burst arrives while its drawing runs.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from core.db import transaction
from core.models import Track
from domain.previews import preview_flights
from engines.render_sandbox import sandbox_for
from tests.conftest import Stack, eventually
from tests.covers_support import decode_png, finished_track, track_row

# Two full-canvas blurs: valid, and slow enough to draw (about a second each).
SLOW_COVER = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">'
    '<filter id="f"><feGaussianBlur stdDeviation="30"/></filter>'
    + '<rect width="100" height="100" fill="#a3c" filter="url(#f)"/>' * 2
    + "</svg>"
)


async def fresh_share(stack: Stack, auth: dict[str, str]) -> str:
    """A shared track with the slow cover and no preview drawn yet; its slug."""
    track = await finished_track(stack, auth)
    path = f"/api/tracks/{track['id']}"
    saved = await stack.http.post(
        f"{path}/cover", json={"svg": SLOW_COVER, "dark": False}, headers=auth
    )
    assert saved.status_code == 200, saved.text
    shared = await stack.http.post(f"{path}/share", headers=auth)
    assert shared.status_code == 201, shared.text
    # As if shared before its preview was drawn: the first visitors draw it.
    row = await track_row(stack, track["id"])
    assert row.cover_png_key is not None
    await stack.storage.delete(row.cover_png_key)
    async with transaction(stack.store.sessions) as session:
        await session.exec(
            update(Track).where(col(Track.id) == uuid.UUID(track["id"])).values(cover_png_key=None)
        )
    return str(shared.json()["slug"])


async def fetch_all(stack: Stack, paths: list[str]) -> list[httpx.Response]:
    return list(await asyncio.gather(*(stack.http.get(path) for path in paths)))


async def test_a_stampede_on_a_fresh_share_draws_its_preview_once(embedded_stack: Stack) -> None:
    stack = embedded_stack
    _, auth = await stack.user(credits=20)
    slug = await fresh_share(stack, auth)
    sandbox = sandbox_for(stack.settings)
    drawn_before = sandbox.started

    answers = await fetch_all(stack, [f"/share/{slug}/cover.png"] * 20)

    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    decode_png(answers[0].content)
    assert sandbox.started - drawn_before == 1
    # Recorded: later visitors read the stored PNG, nothing is drawn again.
    again = await stack.http.get(f"/share/{slug}/cover.png")
    assert again.content == answers[0].content and sandbox.started - drawn_before == 1


@pytest.mark.parametrize("stack_overrides", [{"preview_max_waiting": 4, "preview_max_renders": 1}])
async def test_past_the_queue_bound_visitors_get_503_with_retry_after(
    embedded_stack: Stack, stack_overrides: Any
) -> None:
    stack = embedded_stack
    _, auth = await stack.user(credits=20)
    first, second = await fresh_share(stack, auth), await fresh_share(stack, auth)
    sandbox = sandbox_for(stack.settings)
    drawn_before = sandbox.started
    flights = preview_flights(stack.settings)

    leader = asyncio.create_task(stack.http.get(f"/share/{first}/cover.png"))
    await eventually(lambda: flights.running == 1, timeout_s=10)
    # Eight more for the same preview (three fit beside the leader), and one for another
    # preview while the one drawing slot is taken.
    burst = await fetch_all(
        stack, [f"/share/{first}/cover.png"] * 8 + [f"/share/{second}/cover.png"]
    )
    answers = [await leader, *burst]

    codes = [a.status_code for a in answers]
    assert codes.count(200) == 4 and codes.count(503) == 6, codes
    assert answers[-1].status_code == 503  # the other preview: no drawing slot free
    for refused in (a for a in answers if a.status_code == 503):
        assert int(refused.headers["Retry-After"]) >= 1
        assert "try again" in refused.json()["detail"]
    assert len({a.content for a in answers if a.status_code == 200}) == 1
    assert sandbox.started - drawn_before == 1
    # Once the queue drains, the refused preview is drawn on the next request.
    later = await stack.http.get(f"/share/{second}/cover.png")
    assert later.status_code == 200 and sandbox.started - drawn_before == 2
    assert flights.running == 0 and flights.waiting == 0
