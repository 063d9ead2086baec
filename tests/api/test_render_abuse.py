"""One user's hostile covers and re-rolls must not hurt anyone else (issue 10, render bombs).

On the embedded default (SQLite, where a transaction locks the whole database, and local
files), with the worker and API in this process: a nested-<use> bomb is refused before
drawing, an expensive SVG is killed at its CPU limit, concurrent re-rolls of one track
never answer 5xx, and another user's requests keep succeeding meanwhile. How long those
requests take is measured in bench/abuse.py, not asserted here.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from engines.cover_art import render_cover_svg
from tests.conftest import Stack, eventually
from tests.covers_support import finished_track, track_row

SVG_OPEN = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100 100">'


def use_bomb(levels: int, leaf: str = '<rect id="l0" width="100" height="100"/>') -> str:
    """`levels` nested groups of ten <use> each, over one full-canvas leaf."""
    parts = [SVG_OPEN, "<defs>", leaf]
    for level in range(1, levels + 1):
        uses = "".join(f'<use href="#l{level - 1}"/>' for _ in range(10))
        parts.append(f'<g id="l{level}">{uses}</g>')
    parts.append(f'</defs><use href="#l{levels}"/></svg>')
    return "".join(parts)


# Five levels: 100 000 rectangles from about a kilobyte.
BOMB = use_bomb(5)
# Three levels pass the fan-out budget (about 1000 shapes), but each blurred full-canvas
# shape costs a lot to draw: many seconds of CPU.
EXPENSIVE = use_bomb(
    3,
    '<filter id="f"><feGaussianBlur stdDeviation="30"/></filter>'
    '<rect id="l0" width="100" height="100" fill="#f00" fill-opacity="0.02" filter="url(#f)"/>',
)


def live_renderers() -> list[int]:
    """Render child processes of this test process that are still running (not zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and state != "Z" and b"render_sandbox" in cmdline:
            found.append(int(entry.name))
    return found


async def stored(stack: Stack) -> dict[str, bytes]:
    return {key: await stack.storage.get_bytes(key) for key in await stack.storage.list_keys("")}


async def others_are_served(stack: Stack, auth: dict[str, str], until: asyncio.Task[Any]) -> int:
    """Another user's reads, one after another until `until` finishes; all must succeed."""
    served = 0
    while not until.done():
        for path in ("/api/me", "/api/tracks"):
            response = await stack.http.get(path, headers=auth)
            assert response.status_code == 200, (path, response.status_code, response.text)
            served += 1
        await asyncio.sleep(0.02)
    return served


async def test_a_nested_use_bomb_is_refused_and_nothing_is_stored(embedded_stack: Stack) -> None:
    stack = embedded_stack
    assert len(BOMB.encode()) < 1200
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    objects = await stored(stack)
    before = (await track_row(stack, track["id"])).model_dump()

    response = await stack.http.post(
        f"/api/tracks/{track['id']}/cover", json={"svg": BOMB, "dark": False}, headers=auth
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("cover rejected: ") and "more than 20000" in detail
    assert await stored(stack) == objects
    assert (await track_row(stack, track["id"])).model_dump() == before
    assert live_renderers() == []


@pytest.mark.parametrize("stack_overrides", [{"cover_render_cpu_s": 1}])
async def test_an_expensive_render_is_killed_while_others_are_served(
    embedded_stack: Stack, stack_overrides: Any
) -> None:
    stack = embedded_stack
    _, auth = await stack.user(credits=20)
    _, other = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    objects = await stored(stack)
    before = (await track_row(stack, track["id"])).model_dump()

    save = asyncio.create_task(
        stack.http.post(
            f"/api/tracks/{track['id']}/cover",
            json={"svg": EXPENSIVE, "dark": False},
            headers=auth,
        )
    )
    served = await others_are_served(stack, other, until=save)
    response = save.result()
    assert response.status_code == 422, response.text
    assert "more than 1 s of CPU" in response.json()["detail"]
    assert served > 0
    assert await stored(stack) == objects
    assert (await track_row(stack, track["id"])).model_dump() == before
    # The render died with its request: no process is left drawing.
    await eventually(lambda: live_renderers() == [], timeout_s=10, what="renderer gone")


@pytest.mark.parametrize("stack_overrides", [{"cover_render_timeout_s": 1.0}])
async def test_a_render_past_its_wall_deadline_is_killed(
    embedded_stack: Stack, stack_overrides: Any
) -> None:
    stack = embedded_stack
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    objects = await stored(stack)
    response = await stack.http.post(
        f"/api/tracks/{track['id']}/cover", json={"svg": EXPENSIVE, "dark": True}, headers=auth
    )
    assert response.status_code == 422, response.text
    assert "longer than 1 s" in response.json()["detail"]
    assert await stored(stack) == objects
    await eventually(lambda: live_renderers() == [], timeout_s=10, what="renderer gone")


# With wider render bounds, several draw at once and the compare-and-set decides.
WIDE_OPEN = {
    "cover_render_max_per_user": 6,
    "cover_render_max_concurrent": 6,
    "cover_render_timeout_s": 60,  # six at once on a busy machine still finish
}


@pytest.mark.parametrize("stack_overrides", [{}, WIDE_OPEN], ids=["default", "wide-open"])
async def test_concurrent_rerolls_of_one_track_never_fail_anyone(
    embedded_stack: Stack, stack_overrides: Any
) -> None:
    await _concurrent_rerolls(embedded_stack)


@pytest.mark.parametrize("stack_overrides", [WIDE_OPEN])
async def test_concurrent_rerolls_on_postgres_and_s3(stack: Stack, stack_overrides: Any) -> None:
    await _concurrent_rerolls(stack)


async def _concurrent_rerolls(stack: Stack) -> None:
    _, auth = await stack.user(credits=20)
    _, other = await stack.user(credits=20)
    track = await finished_track(stack, auth, prompt="Night drive", seed=77)
    path = f"/api/tracks/{track['id']}/increment-visual-version"

    async def storm() -> list[int]:
        answers = await asyncio.gather(*(stack.http.post(path, headers=auth) for _ in range(20)))
        return [answer.status_code for answer in answers]

    rerolls = asyncio.create_task(storm())
    served = await others_are_served(stack, other, until=rerolls)
    codes = rerolls.result()
    assert served > 0
    assert set(codes) <= {200, 409, 429}, codes
    assert 200 in codes
    # Every winner bumped the version once, and the stored art is the final version's.
    row = await track_row(stack, track["id"])
    assert row.visual_version == 1 + codes.count(200)
    assert row.cover_key is not None
    svg = (await stack.storage.get_bytes(row.cover_key)).decode()
    assert svg == render_cover_svg("Night drive", 77, row.visual_version)
    again = await stack.http.post(path, headers=auth)
    assert again.status_code == 200 and again.json()["visual_version"] == row.visual_version + 1


@pytest.mark.parametrize("stack_overrides", [{"rate_limit_cover_reroll": 2}])
async def test_rerolls_are_rate_limited_per_user(
    embedded_stack: Stack, stack_overrides: Any
) -> None:
    stack = embedded_stack
    _, auth = await stack.user(credits=20)
    _, other = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    other_track = await finished_track(stack, other)
    path = f"/api/tracks/{track['id']}/increment-visual-version"
    for _ in range(2):
        assert (await stack.http.post(path, headers=auth)).status_code == 200
    limited = await stack.http.post(path, headers=auth)
    assert limited.status_code == 429 and "Retry-After" in limited.headers
    assert "cover re-rolls" in limited.json()["detail"]
    assert (await track_row(stack, track["id"])).visual_version == 3
    # The limit is per user.
    other_path = f"/api/tracks/{other_track['id']}/increment-visual-version"
    assert (await stack.http.post(other_path, headers=other)).status_code == 200
