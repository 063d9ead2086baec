"""Covers through the HTTP API: generated SVG + PNG, re-roll, the user's own SVG, flags."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from PIL import ImageChops

from core.models import User
from domain.covers import COVER_SAVE_OFF, PNG_SIZE
from engines.cover_art import palette_for, render_cover_svg
from engines.svg_sanitize import sanitize_svg
from tests.conftest import Stack
from tests.covers_support import (
    BENIGN,
    HOSTILE,
    decode_png,
    finished_track,
    track_row,
    user_as_created_now,
)

HEX = re.compile(r"#[0-9a-f]{6}")
GRADIENT_SVG = next(p for p in BENIGN if p.name == "gradients.svg").read_text()


async def fetch(url: str) -> httpx.Response:
    # Signed links point at versitygw (another origin than the in-process API).
    async with httpx.AsyncClient() as plain:
        return await plain.get(url)


async def test_generated_cover_is_svg_and_png_and_a_reroll_differs(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=20)
    _, stranger = await stack.user(credits=20)
    track = await finished_track(stack, auth, prompt="Warm ambient pad", seed=1234)
    track_id = track["id"]
    assert track["visual_version"] == 1 and track["cover_source"] == "generated"

    first_svg = (await fetch(track["cover_url"])).text
    assert first_svg == render_cover_svg("Warm ambient pad", 1234, 1)
    row = await track_row(stack, track_id)
    assert row.cover_key == f"covers/{user_id}/{track_id}.svg"
    # The track was COMPLETE without its PNG preview: sharing it draws one.
    assert row.cover_png_key is None
    slug = (await stack.http.post(f"/api/tracks/{track_id}/share", headers=auth)).json()["slug"]
    assert (await track_row(stack, track_id)).cover_png_key is not None
    preview = await stack.http.get(f"/share/{slug}/cover.png")
    assert preview.status_code == 200, preview.text
    first_png = decode_png(preview.content)
    assert first_png.size == (PNG_SIZE, PNG_SIZE)
    row = await track_row(stack, track_id)
    assert row.cover_png_key == f"covers/{user_id}/{track_id}.png"
    assert await stack.storage.get_bytes(row.cover_png_key) == preview.content

    # Only the owner may re-roll; anyone else learns nothing about the track.
    path = f"/api/tracks/{track_id}/increment-visual-version"
    assert (await stack.http.post(path, headers=stranger)).status_code == 404
    assert (await stack.http.post(path)).status_code == 401
    missing = f"/api/tracks/{uuid.uuid4()}/increment-visual-version"
    assert (await stack.http.post(missing, headers=auth)).status_code == 404

    response = await stack.http.post(path, headers=auth)
    assert response.status_code == 200, response.text
    rerolled = response.json()
    assert rerolled["visual_version"] == 2 and rerolled["cover_url"]
    second_svg = (await fetch(rerolled["cover_url"])).text
    assert second_svg != first_svg
    assert second_svg == render_cover_svg("Warm ambient pad", 1234, 2)
    # A different palette, and each SVG uses its own version's colours.
    old, new = palette_for("Warm ambient pad", 1234, 1), palette_for("Warm ambient pad", 1234, 2)
    assert set(old) != set(new)
    assert set(old) <= set(HEX.findall(first_svg))
    assert set(new) <= set(HEX.findall(second_svg))
    assert not set(new) <= set(HEX.findall(first_svg))

    second_png = decode_png(await stack.storage.get_bytes(row.cover_png_key))
    assert second_png.size == (PNG_SIZE, PNG_SIZE)
    diff = ImageChops.difference(first_png.convert("RGB"), second_png.convert("RGB"))
    assert diff.getbbox() is not None, "the re-rolled PNG is pixel-identical"

    again = (await stack.http.get(f"/api/tracks/{track_id}", headers=auth)).json()
    assert again["visual_version"] == 2
    assert (await track_row(stack, track_id)).visual_version == 2
    assert row.cover_key and row.cover_png_key
    assert sorted(await stack.storage.list_keys("covers/")) == sorted(
        [row.cover_key, row.cover_png_key]
    )


@pytest.mark.parametrize("start_worker", [False])
async def test_covers_wait_for_a_complete_track(stack: Stack, start_worker: bool) -> None:
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth)  # no worker: it stays QUEUED
    track_id = created["track_id"]
    reroll = await stack.http.post(f"/api/tracks/{track_id}/increment-visual-version", headers=auth)
    assert reroll.status_code == 409
    assert "COMPLETE" in reroll.json()["detail"] and "QUEUED" in reroll.json()["detail"]
    save = await stack.http.post(
        f"/api/tracks/{track_id}/cover", json={"svg": GRADIENT_SVG, "dark": True}, headers=auth
    )
    assert save.status_code == 409
    assert (await track_row(stack, track_id)).visual_version == 1
    assert await stack.storage.list_keys("") == []


async def test_user_cover_is_saved_served_and_rerolled_away(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=20)
    _, stranger = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    track_id = track["id"]
    path = f"/api/tracks/{track_id}/cover"
    body = {"svg": GRADIENT_SVG, "dark": True}

    assert (await stack.http.post(path, json=body, headers=stranger)).status_code == 404
    assert (await stack.http.post(path, json=body)).status_code == 401

    response = await stack.http.post(path, json=body, headers=auth)
    assert response.status_code == 200, response.text
    saved = response.json()
    assert saved["track_id"] == track_id and saved["cover_source"] == "user"
    served = await fetch(saved["cover_url"])
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("image/svg+xml")
    # Stored is exactly what the sanitizer checked.
    assert served.text == sanitize_svg(GRADIENT_SVG)

    row = await track_row(stack, track_id)
    assert (row.cover_source, row.cover_dark) == ("user", True)
    assert row.cover_key == f"covers/{user_id}/{track_id}.svg"
    png = decode_png(await stack.storage.get_bytes(f"covers/{user_id}/{track_id}.png"))
    assert png.size == (PNG_SIZE, PNG_SIZE)
    shown = (await stack.http.get(f"/api/tracks/{track_id}", headers=auth)).json()
    assert shown["cover_source"] == "user"
    assert (await fetch(shown["cover_url"])).text == sanitize_svg(GRADIENT_SVG)

    # A re-roll asks for generated art: it replaces the user's cover.
    rerolled = await stack.http.post(
        f"/api/tracks/{track_id}/increment-visual-version", headers=auth
    )
    assert rerolled.status_code == 200
    assert rerolled.json()["cover_source"] == "generated"
    assert (await fetch(rerolled.json()["cover_url"])).text == render_cover_svg(
        track["prompt"], track["seed"], 2
    )
    row = await track_row(stack, track_id)
    assert (row.cover_source, row.cover_dark, row.visual_version) == ("generated", None, 2)


def _snapshot(row: Any) -> dict[str, Any]:
    return row.model_dump()


@pytest.mark.parametrize("stack_overrides", [{"rate_limit_cover_save": 1000}])
async def test_hostile_corpus_is_refused_and_nothing_is_stored(
    stack: Stack, stack_overrides: Any
) -> None:
    assert len(HOSTILE) >= 20
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    track_id = track["id"]
    keys = await stack.storage.list_keys("")
    objects = {key: await stack.storage.get_bytes(key) for key in keys}
    before = _snapshot(await track_row(stack, track_id))

    for sample in HOSTILE:
        response = await stack.http.post(
            f"/api/tracks/{track_id}/cover",
            json={"svg": sample.read_text(), "dark": False},
            headers=auth,
        )
        assert response.status_code in (400, 413), (sample.name, response.text)
        if response.status_code == 400:
            assert response.json()["detail"].startswith("cover rejected: "), sample.name

    assert await stack.storage.list_keys("") == keys
    for key, data in objects.items():
        assert await stack.storage.get_bytes(key) == data, key
    assert _snapshot(await track_row(stack, track_id)) == before
    shown = (await stack.http.get(f"/api/tracks/{track_id}", headers=auth)).json()
    assert (await fetch(shown["cover_url"])).text == render_cover_svg(
        track["prompt"], track["seed"], 1
    )


async def test_oversized_cover_is_413_and_nothing_is_stored(stack: Stack) -> None:
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    keys = await stack.storage.list_keys("")
    before = _snapshot(await track_row(stack, track["id"]))
    padding = "<!--" + "x" * 1_000_000 + "-->"  # valid SVG, just over 1 MB
    big = f'<svg xmlns="http://www.w3.org/2000/svg">{padding}<rect width="1" height="1"/></svg>'
    response = await stack.http.post(
        f"/api/tracks/{track['id']}/cover", json={"svg": big, "dark": False}, headers=auth
    )
    assert response.status_code == 413, response.text
    assert "1000000 bytes" in response.json()["detail"]
    assert await stack.storage.list_keys("") == keys
    assert _snapshot(await track_row(stack, track["id"])) == before


@pytest.mark.parametrize("stack_overrides", [{"feature_cover_save": False}])
async def test_cover_saving_turned_off_keeps_generated_covers(
    stack: Stack, stack_overrides: Any
) -> None:
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    keys = await stack.storage.list_keys("")
    response = await stack.http.post(
        f"/api/tracks/{track['id']}/cover", json={"svg": GRADIENT_SVG}, headers=auth
    )
    assert response.status_code == 403
    assert response.json()["detail"] == COVER_SAVE_OFF
    assert "FEATURE_COVER_SAVE=false" in COVER_SAVE_OFF
    assert await stack.storage.list_keys("") == keys
    # Generated covers are untouched by the flag.
    assert (await fetch(track["cover_url"])).status_code == 200
    rerolled = await stack.http.post(
        f"/api/tracks/{track['id']}/increment-visual-version", headers=auth
    )
    assert rerolled.status_code == 200 and rerolled.json()["visual_version"] == 2


@pytest.mark.parametrize("stack_overrides", [{"rate_limit_cover_save": 2}])
async def test_cover_saves_are_rate_limited_per_user(stack: Stack, stack_overrides: Any) -> None:
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    path = f"/api/tracks/{track['id']}/cover"
    body = {"svg": GRADIENT_SVG, "dark": False}
    for _ in range(2):
        assert (await stack.http.post(path, json=body, headers=auth)).status_code == 200
    limited = await stack.http.post(path, json=body, headers=auth)
    assert limited.status_code == 429 and "Retry-After" in limited.headers


@pytest.mark.parametrize("stack_overrides", [{"style_seed_enabled": True}])
async def test_covers_follow_the_users_style_seed_when_on(
    stack: Stack, stack_overrides: Any
) -> None:
    user_id, auth = await user_as_created_now(stack, credits=20)
    async with stack.store.sessions() as session:
        user = await session.get(User, user_id)
        assert user is not None and user.user_style_seed is not None
        style_seed = user.user_style_seed
    first = await finished_track(stack, auth, prompt="Night drive", seed=1)
    second = await finished_track(stack, auth, prompt="Night drive", seed=2)
    expected = render_cover_svg("Night drive", style_seed, 1)
    # Two tracks, two seeds, one look: the user's.
    assert (await fetch(first["cover_url"])).text == expected
    assert (await fetch(second["cover_url"])).text == expected
    rerolled = await stack.http.post(
        f"/api/tracks/{first['id']}/increment-visual-version", headers=auth
    )
    assert (await fetch(rerolled.json()["cover_url"])).text == render_cover_svg(
        "Night drive", style_seed, 2
    )


async def test_covers_use_the_track_seed_while_style_seeds_are_off(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=20)
    async with stack.store.sessions() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.user_style_seed = 99  # set, but the flag is off
        session.add(user)
        await session.commit()
    track = await finished_track(stack, auth, prompt="Night drive", seed=5)
    assert (await fetch(track["cover_url"])).text == render_cover_svg("Night drive", 5, 1)
