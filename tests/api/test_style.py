"""The style system through the HTTP API and the CLI: each flag off, then on."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, select

from core.contracts import JobStatus
from core.models import Series, StyleUnlock, Track, User
from domain import style
from engines.cover_art import palette_for
from tests.conftest import Stack
from tests.covers_support import user_as_created_now

ALL_ON = {
    "style_seed_enabled": True,
    "style_unlocks_enabled": True,
    "style_series_enabled": True,
}
# Many tracks are made quickly here; no worker, so they stay QUEUED unless a test says.
MANY_TRACKS = {"rate_limit_create_track_free": 1000}


async def _style_seed(stack: Stack, user_id: uuid.UUID) -> int | None:
    async with stack.store.sessions() as session:
        user = await session.get(User, user_id)
    assert user is not None
    return user.user_style_seed


async def test_every_style_endpoint_says_when_its_flag_is_off(stack: Stack) -> None:
    user_id, auth = await user_as_created_now(stack)
    assert await _style_seed(stack, user_id) is None  # STYLE_SEED_ENABLED is off

    me = await stack.http.get("/api/style/me", headers=auth)
    assert me.status_code == 403 and me.json()["detail"] == style.ALL_OFF
    for method, path, body in (
        ("GET", "/api/style/series", None),
        ("POST", "/api/style/series", {"title": "Night drives"}),
    ):
        refused = await stack.http.request(method, path, json=body, headers=auth)
        assert refused.status_code == 403, path
        assert refused.json()["detail"] == style.SERIES_OFF
        assert "STYLE_SERIES_ENABLED=false" in refused.json()["detail"]
    unlocks = await stack.http.get("/api/style/unlocks", headers=auth)
    assert unlocks.status_code == 403 and "STYLE_UNLOCKS_ENABLED=false" in unlocks.text

    # A series on a new track is refused before anything is charged.
    refused = await stack.http.post(
        "/api/tracks",
        json={"prompt": "x", "duration_s": 5, "series_id": str(uuid.uuid4())},
        headers=auth,
    )
    assert refused.status_code == 403 and refused.json()["detail"] == style.SERIES_OFF
    assert await stack.credits(user_id) == 100

    # Off means off: nothing is written behind the flags.
    created = await stack.create_track(auth)
    async with stack.store.sessions() as session:
        assert list(await session.exec(select(Series))) == []
        assert list(await session.exec(select(StyleUnlock))) == []
        track = await session.get(Track, uuid.UUID(created["track_id"]))
    assert track is not None and track.series_id is None


@pytest.mark.parametrize("stack_overrides", [{"style_seed_enabled": True}])
async def test_style_seed_on(stack: Stack, stack_overrides: Any) -> None:
    user_id, auth = await user_as_created_now(stack)
    seed = await _style_seed(stack, user_id)
    assert seed is not None and 0 <= seed < 2**31

    me = await stack.http.get("/api/style/me", headers=auth)
    assert me.status_code == 200, me.text
    assert me.json() == {
        "enabled": {"seed": True, "unlocks": False, "series": False},
        "style_seed": seed,
        "unlocks": None,
        "series": None,
    }
    # Users from before the flag get theirs on first use, and keep it.
    old_id, old_auth = await stack.user()
    assert await _style_seed(stack, old_id) is None
    given = (await stack.http.get("/api/style/me", headers=old_auth)).json()["style_seed"]
    assert given is not None and given == await _style_seed(stack, old_id)
    assert (await stack.http.get("/api/style/me", headers=old_auth)).json()["style_seed"] == given
    # Other parts still say they are off.
    assert (await stack.http.get("/api/style/series", headers=auth)).status_code == 403


async def _complete(stack: Stack, track_ids: list[str]) -> None:
    """Mark tracks COMPLETE directly: the unlock rules count finished tracks, and running
    ten real jobs would only slow this test down (test_pipeline covers that path)."""
    async with stack.store.sessions() as session:
        await session.exec(
            update(Track)
            .where(col(Track.id).in_([uuid.UUID(t) for t in track_ids]))
            .values(status=JobStatus.COMPLETE)
        )
        await session.commit()


async def _unlocked(stack: Stack, auth: dict[str, str]) -> list[str]:
    response = await stack.http.get("/api/style/unlocks", headers=auth)
    assert response.status_code == 200, response.text
    return [u["name"] for u in response.json()]


async def _stored_unlocks(stack: Stack, user_id: uuid.UUID) -> list[str]:
    async with stack.store.sessions() as session:
        rows = await session.exec(
            select(StyleUnlock.name).where(col(StyleUnlock.user_id) == user_id)
        )
        return sorted(rows)


@pytest.mark.parametrize("start_worker", [False])
@pytest.mark.parametrize("stack_overrides", [{"style_unlocks_enabled": True, **MANY_TRACKS}])
async def test_unlocks_follow_the_rule_table(
    stack: Stack, stack_overrides: Any, start_worker: bool
) -> None:
    assert [(r.name, r.completed_tracks) for r in style.UNLOCK_RULES] == [
        ("ember", 1),
        ("tide", 5),
        ("aurora", 10),
    ]
    user_id, auth = await stack.user(credits=100)
    made = [(await stack.create_track(auth))["track_id"]]
    assert await _stored_unlocks(stack, user_id) == []  # nothing finished yet

    await _complete(stack, made)
    made.append((await stack.create_track(auth))["track_id"])  # creation checks the rules
    assert await _stored_unlocks(stack, user_id) == ["ember"]

    for _ in range(3):
        made.append((await stack.create_track(auth))["track_id"])
    await _complete(stack, made[:4])
    assert await _unlocked(stack, auth) == ["ember"]  # 4 COMPLETE: not yet tide
    await _complete(stack, made[:5])
    made.append((await stack.create_track(auth))["track_id"])
    assert await _stored_unlocks(stack, user_id) == ["ember", "tide"]

    for _ in range(4):
        made.append((await stack.create_track(auth))["track_id"])
    await _complete(stack, made[:10])
    assert await _unlocked(stack, auth) == ["ember", "tide", "aurora"]
    # Idempotent: more reads and tracks never duplicate an unlock.
    await stack.create_track(auth)
    await _unlocked(stack, auth)
    assert await _stored_unlocks(stack, user_id) == ["aurora", "ember", "tide"]

    me = (await stack.http.get("/api/style/me", headers=auth)).json()
    assert [u["name"] for u in me["unlocks"]] == ["ember", "tide", "aurora"]
    assert me["style_seed"] is None and me["series"] is None
    # Another user's progress is their own.
    _, other = await stack.user()
    assert await _unlocked(stack, other) == []


@pytest.mark.parametrize("stack_overrides", [{"style_unlocks_enabled": True}])
async def test_a_real_finished_track_unlocks_ember(stack: Stack, stack_overrides: Any) -> None:
    user_id, auth = await stack.user(credits=20)
    created = await stack.create_track(auth)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "COMPLETE"
    assert await _unlocked(stack, auth) == ["ember"]
    assert await _stored_unlocks(stack, user_id) == ["ember"]


@pytest.mark.parametrize("start_worker", [False])
@pytest.mark.parametrize(
    "stack_overrides", [{"style_series_enabled": True, "rate_limit_series_create": 5}]
)
async def test_series_on(stack: Stack, stack_overrides: Any, start_worker: bool) -> None:
    user_id, auth = await user_as_created_now(stack)
    default_slug = f"default-{user_id}"
    listed = await stack.http.get("/api/style/series", headers=auth)
    assert listed.status_code == 200, listed.text
    assert [(s["slug"], s["default"]) for s in listed.json()] == [(default_slug, True)]
    default_id = listed.json()[0]["id"]

    made = await stack.http.post("/api/style/series", json={"title": "Night Drives!"}, headers=auth)
    assert made.status_code == 201, made.text
    night = made.json()
    assert (night["slug"], night["title"], night["default"]) == (
        "night-drives",
        "Night Drives!",
        False,
    )
    again = await stack.http.post("/api/style/series", json={"title": "Night drives"}, headers=auth)
    assert again.json()["slug"] == "night-drives-2"  # derived slugs never collide
    taken = await stack.http.post(
        "/api/style/series", json={"title": "x", "slug": "night-drives"}, headers=auth
    )
    assert taken.status_code == 409
    reserved = await stack.http.post(
        "/api/style/series", json={"title": "x", "slug": "default-mine"}, headers=auth
    )
    assert reserved.status_code == 422
    # The fifth attempt within the hour is the last one allowed.
    bad_slug = await stack.http.post(
        "/api/style/series", json={"title": "x", "slug": "Not A Slug"}, headers=auth
    )
    assert bad_slug.status_code == 422
    limited = await stack.http.post("/api/style/series", json={"title": "More"}, headers=auth)
    assert limited.status_code == 429 and "Retry-After" in limited.headers

    slugs = [s["slug"] for s in (await stack.http.get("/api/style/series", headers=auth)).json()]
    assert slugs == [default_slug, "night-drives", "night-drives-2"]

    # Tracks: a chosen series of mine, else the default one; never someone else's.
    chosen = await stack.create_track(auth, series_id=night["id"])
    plain = await stack.create_track(auth)
    for created, series_id in ((chosen, night["id"]), (plain, default_id)):
        shown = await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)
        assert shown.json()["series_id"] == series_id
    other_id, other_auth = await user_as_created_now(stack)
    credits = await stack.credits(other_id)
    for series_id in (night["id"], str(uuid.uuid4())):
        refused = await stack.http.post(
            "/api/tracks",
            json={"prompt": "x", "duration_s": 5, "series_id": series_id},
            headers=other_auth,
        )
        assert refused.status_code == 404, refused.text
    assert await stack.credits(other_id) == credits
    other = (await stack.http.get("/api/style/series", headers=other_auth)).json()
    assert [s["slug"] for s in other] == [f"default-{other_id}"]

    me = (await stack.http.get("/api/style/me", headers=auth)).json()
    assert me["enabled"] == {"seed": False, "unlocks": False, "series": True}
    assert [s["slug"] for s in me["series"]] == slugs


async def test_tokens_are_public_and_match_the_covers(stack: Stack) -> None:
    response = await stack.http.get("/api/tokens")  # no token
    assert response.status_code == 200
    assert "public" in response.headers["cache-control"]
    tokens = response.json()
    assert tokens["palette_roles"] == ["deep", "background", "primary", "secondary", "highlight"]
    assert set(tokens["palettes"]) == {"foundry", "ember", "tide", "aurora"}
    for name, colours in tokens["palettes"].items():
        assert list(colours.values()) == palette_for(style.PALETTE_PHRASES[name], 0, 1)
        assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours.values())
    assert tokens["unlockable_palettes"] == {"ember": 1, "tide": 5, "aurora": 10}
    assert tokens["type"]["scale_px"]["md"] == 16 and tokens["type"]["scale_px"]["xl"] == 25
    assert "Inter" in tokens["type"]["font_family"]
    assert tokens["spacing_px"]["4"] == 16


@pytest.mark.parametrize("start_worker", [False])
async def test_backfill_style_seed_is_idempotent(stack: Stack, start_worker: bool) -> None:
    without = [(await stack.user())[0] for _ in range(3)]
    with_seed = []
    for _ in range(2):
        user_id, _auth = await stack.user()
        async with stack.store.sessions() as session:
            await session.exec(
                update(User).where(col(User.id) == user_id).values(user_style_seed=7)
            )
            await session.commit()
        with_seed.append(user_id)

    done = await stack.cli("backfill", "style-seed", STYLE_SERIES_ENABLED="true")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 users given a style seed, 2 already had one" in done.stdout
    assert "5 default series created, 0 already existed" in done.stdout
    seeds = {u: await _style_seed(stack, u) for u in without + with_seed}
    assert all(seed is not None for seed in seeds.values())
    assert [seeds[u] for u in with_seed] == [7, 7]  # left alone

    again = await stack.cli("backfill", "style-seed", STYLE_SERIES_ENABLED="true")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 users given a style seed, 5 already had one" in again.stdout
    assert "0 default series created, 5 already existed" in again.stdout
    assert {u: await _style_seed(stack, u) for u in seeds} == seeds
    async with stack.store.sessions() as session:
        series = list(await session.exec(select(Series)))
    assert sorted(s.slug for s in series) == sorted(f"default-{u}" for u in seeds)

    # Series off: seeds only, and it says why nothing else happened.
    await stack.user()
    third = await stack.cli("backfill", "style-seed")
    assert "1 user given a style seed, 5 already had one" in third.stdout
    assert "STYLE_SERIES_ENABLED=false" in third.stdout
    assert "STYLE_SEED_ENABLED=false" in third.stdout
