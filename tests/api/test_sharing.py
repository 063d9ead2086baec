"""Sharing and downloads: share links, the public page and its previews, a private bucket."""

from __future__ import annotations

import io
import uuid
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest
import soundfile as sf
from sqlmodel import col, select

from core.models import ShareLink
from domain.covers import PNG_SIZE
from tests.conftest import Stack
from tests.covers_support import decode_png, finished_track

PROMPT = 'Rain on a tin roof & "late" <night> drive'


class PageParser(HTMLParser):
    """Meta tags by property/name, and every tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.meta: dict[str, str] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "meta":
            key = attributes.get("property") or attributes.get("name")
            if key and attributes.get("content") is not None:
                self.meta[key] = str(attributes["content"])
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


def local(url: str) -> str:
    """An absolute URL of the API as a path for the in-process client."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def share(stack: Stack, track_id: str, auth: dict[str, str]) -> httpx.Response:
    return await stack.http.post(f"/api/tracks/{track_id}/share", headers=auth)


async def test_share_page_has_preview_tags_that_point_at_working_urls(stack: Stack) -> None:
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth, prompt=PROMPT, duration_s=6)

    first = await share(stack, track["id"], auth)
    assert first.status_code == 201, first.text
    slug = first.json()["slug"]
    assert len(slug) >= 22  # at least 16 random bytes, URL-safe base64
    assert first.json()["share_url"] == f"{stack.settings.public_base_url}/share/{slug}"
    again = await share(stack, track["id"], auth)
    assert again.status_code == 200 and again.json()["slug"] == slug  # idempotent

    response = await stack.http.get(f"/share/{slug}")  # anonymous
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    html = response.text
    # No inline script or style anywhere, and the prompt is escaped, never markup.
    assert "<script" not in html and "<style" not in html and " style=" not in html
    assert "<night>" not in html
    page = parse(html)

    meta = page.meta
    assert meta["og:title"] == PROMPT and PROMPT in page.title
    assert meta["og:type"] == "music.song"
    assert "6-second instrumental" in meta["og:description"]
    assert meta["og:url"] == first.json()["share_url"]
    assert meta["twitter:card"] == "summary_large_image"
    assert meta["twitter:image"] == meta["og:image"]
    assert meta["og:image"] == f"{stack.settings.public_base_url}/share/{slug}/cover.png?v=1"
    assert meta["og:image:type"] == "image/png"
    assert meta["og:audio"] == f"{stack.settings.public_base_url}/share/{slug}/audio"
    assert meta["og:audio:type"] == "audio/mpeg"  # the MP3 stream
    assert ("img", "src", local(meta["og:image"])) in [
        (tag, "src", attrs.get("src")) for tag, attrs in page.tags
    ]
    audio_tags = [attrs for tag, attrs in page.tags if tag == "audio"]
    assert len(audio_tags) == 1 and "controls" in audio_tags[0]
    assert audio_tags[0]["src"] == local(meta["og:audio"])

    # og:image: a stable URL that serves the PNG itself.
    image = await stack.http.get(local(meta["og:image"]))
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert decode_png(image.content).size == (PNG_SIZE, PNG_SIZE)
    assert (await stack.http.head(local(meta["og:image"]))).status_code == 200

    # og:audio: a stable URL that hands out a fresh signed link each time.
    audio = await stack.http.get(local(meta["og:audio"]))
    assert audio.status_code == 307 and audio.headers["cache-control"] == "no-store"
    async with httpx.AsyncClient() as plain:
        signed = await plain.get(audio.headers["location"])
        ranged = await plain.get(audio.headers["location"], headers={"Range": "bytes=0-99"})
    assert signed.status_code == 200
    data, rate = sf.read(io.BytesIO(signed.content))
    assert abs(len(data) / rate - 6) < 0.1
    assert ranged.status_code == 206 and len(ranged.content) == 100  # players can seek

    # A re-roll changes the preview URL, so caches keyed on it fetch the new cover.
    await stack.http.post(f"/api/tracks/{track['id']}/increment-visual-version", headers=auth)
    meta = parse((await stack.http.get(f"/share/{slug}")).text).meta
    assert meta["og:image"].endswith(f"/share/{slug}/cover.png?v=2")
    fresh = await stack.http.get(local(meta["og:image"]))
    assert fresh.status_code == 200 and fresh.content != image.content


async def test_revoked_and_unknown_links_are_404_everywhere(stack: Stack) -> None:
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    slug = (await share(stack, track["id"], auth)).json()["slug"]
    for path in (f"/share/{slug}", f"/share/{slug}/cover.png", f"/share/{slug}/audio"):
        assert (await stack.http.get(path)).status_code in (200, 307), path

    revoked = await stack.http.delete(f"/api/tracks/{track['id']}/share", headers=auth)
    assert revoked.status_code == 204
    unknown = "A" * 32
    for gone in (slug, unknown, "short", "..%2F..%2Fetc", "x" * 200):
        for path in (f"/share/{gone}", f"/share/{gone}/cover.png", f"/share/{gone}/audio"):
            response = await stack.http.get(path)
            assert response.status_code == 404, path
            assert "location" not in response.headers
    page = await stack.http.get(f"/share/{slug}")
    assert "does not exist" in page.text and "og:image" not in page.text
    # Revoking again is fine; sharing again makes a new slug, the old stays dead.
    again = await stack.http.delete(f"/api/tracks/{track['id']}/share", headers=auth)
    assert again.status_code == 204
    renewed = await share(stack, track["id"], auth)
    assert renewed.status_code == 201 and renewed.json()["slug"] != slug
    assert (await stack.http.get(f"/share/{slug}")).status_code == 404
    assert (await stack.http.get(f"/share/{renewed.json()['slug']}")).status_code == 200
    async with stack.store.sessions() as session:
        links = list(
            await session.exec(
                select(ShareLink).where(col(ShareLink.track_id) == uuid.UUID(track["id"]))
            )
        )
    assert sorted(link.revoked_at is None for link in links) == [False, True]


async def test_other_users_cannot_share_or_revoke(stack: Stack) -> None:
    _, auth = await stack.user(credits=20)
    _, stranger = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    path = f"/api/tracks/{track['id']}/share"
    assert (await stack.http.post(path, headers=stranger)).status_code == 404
    assert (await stack.http.post(path)).status_code == 401
    slug = (await share(stack, track["id"], auth)).json()["slug"]
    assert (await stack.http.delete(path, headers=stranger)).status_code == 404
    assert (await stack.http.delete(path)).status_code == 401
    assert (await stack.http.get(f"/share/{slug}")).status_code == 200  # still shared
    missing = f"/api/tracks/{uuid.uuid4()}/share"
    assert (await stack.http.post(missing, headers=auth)).status_code == 404


@pytest.mark.parametrize("start_worker", [False])
async def test_unfinished_tracks_cannot_be_shared(stack: Stack, start_worker: bool) -> None:
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth)
    refused = await share(stack, created["track_id"], auth)
    assert refused.status_code == 409 and "COMPLETE" in refused.json()["detail"]


async def test_the_bucket_is_private(stack: Stack) -> None:
    """Files leave only through signed, expiring links: no anonymous listing or reads."""
    user_id, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    endpoint, bucket = stack.settings.s3_endpoint, stack.settings.s3_bucket
    key = f"tracks/{user_id}/{track['id']}.stream.mp3"
    assert await stack.storage.exists(key)
    async with httpx.AsyncClient() as anonymous:
        for url in (
            f"{endpoint}/{bucket}",
            f"{endpoint}/{bucket}/?list-type=2",
            f"{endpoint}/{bucket}/?prefix=tracks/",
            f"{endpoint}/{bucket}/{key}",
            f"{endpoint}/{bucket}/covers/{user_id}/{track['id']}.png",
        ):
            response = await anonymous.get(url)
            assert response.status_code == 403, (url, response.status_code)
            assert key not in response.text
        # Signed links work and live under the user's own prefix.
        signed = await anonymous.get(track["file_url"])
        assert signed.status_code == 200
    assert f"/tracks/{user_id}/" in track["file_url"]
    assert f"/covers/{user_id}/" in track["cover_url"]
    assert "X-Amz-Expires=" in track["file_url"]


async def test_sharing_on_the_embedded_default(embedded_stack: Stack) -> None:
    """Local files: the audio redirect lands on a signed /files link that serves ranges."""
    stack = embedded_stack
    _, auth = await stack.user(credits=20)
    track = await finished_track(stack, auth)
    slug = (await share(stack, track["id"], auth)).json()["slug"]
    meta = parse((await stack.http.get(f"/share/{slug}")).text).meta
    image = await stack.http.get(local(meta["og:image"]))
    assert decode_png(image.content).size == (PNG_SIZE, PNG_SIZE)
    audio = await stack.http.get(local(meta["og:audio"]), follow_redirects=True)
    assert audio.status_code == 200
    data, rate = sf.read(io.BytesIO(audio.content))
    assert abs(len(data) / rate - 6) < 0.1
    redirect = await stack.http.get(local(meta["og:audio"]))
    ranged = await stack.http.get(
        local(redirect.headers["location"]), headers={"Range": "bytes=0-9"}
    )
    assert ranged.status_code == 206 and len(ranged.content) == 10
