"""Writes that never tear, on every backend, and S3 links that serve SVGs as the local
/files route does (an attachment of its own type, never a document on the storage origin).

Two writers of one key start at the same instant (a barrier); each writes enough that the
writes overlap. Each must succeed, and the object must be exactly one writer's bytes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from core.s3_storage import S3Storage
from core.storage import LocalStorage, Storage

SIZE = 16 * 1024 * 1024  # big enough that two writes overlap for many milliseconds
ROUNDS = 3
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalStorage]:
    async with LocalStorage(tmp_path / "objects", "http://testserver", "k" * 32) as storage:
        assert isinstance(storage, LocalStorage)
        yield storage


async def race(storage: Storage, key: str, payloads: list[bytes], tmp_path: Path) -> None:
    """Each payload written to `key` by its own writer, all released at one instant:
    half by put_bytes, half by put_file."""
    barrier = asyncio.Barrier(len(payloads))

    async def write(index: int, data: bytes) -> None:
        source = tmp_path / f"source-{index}"
        source.write_bytes(data)
        await barrier.wait()
        if index % 2:
            await storage.put_file(key, source, "application/octet-stream")
        else:
            await storage.put_bytes(key, data, "application/octet-stream")

    await asyncio.gather(*(write(i, data) for i, data in enumerate(payloads)))


def payloads(round_: int) -> list[bytes]:
    return [bytes([round_ * 2 + i]) * SIZE + os.urandom(64) for i in range(2)]


async def one_writer_wins_each_time(storage: Storage, tmp_path: Path) -> str:
    key = "previews/u/t.png"
    for round_ in range(ROUNDS):
        written = payloads(round_)
        await race(storage, key, written, tmp_path)  # neither writer fails
        assert await storage.get_bytes(key) in written, "the object is not one writer's bytes"
    # No temporary object is left behind or listed.
    assert await storage.list_keys("previews/") == [key]
    return key


async def test_two_local_writers_at_one_instant_leave_one_whole_file(
    local: LocalStorage, tmp_path: Path
) -> None:
    key = await one_writer_wins_each_time(local, tmp_path)
    assert [p.name for p in local.path_for(key).parent.iterdir()] == ["t.png"]


async def test_two_s3_writers_at_one_instant_leave_one_whole_object(
    s3: S3Storage, tmp_path: Path
) -> None:
    await one_writer_wins_each_time(s3, tmp_path)


async def test_s3_links_serve_svg_as_an_attachment_of_its_own_type(s3: S3Storage) -> None:
    key = "covers/u/t.svg"
    await s3.put_bytes(key, SVG, "image/svg+xml")
    async with httpx.AsyncClient(timeout=10) as http:
        # Plain, inline asked for, and with a download name: an attachment every time,
        # since S3 cannot sandbox a document with a CSP as /files does.
        for url in (
            await s3.signed_url(key, 60),
            await s3.signed_url(key, 60, inline=True),
            await s3.signed_url(key, 60, download_name="my cover.svg"),
        ):
            opened = await http.get(url)
            assert opened.status_code == 200 and opened.content == SVG
            assert opened.headers["content-type"] == "image/svg+xml"
            assert opened.headers["content-disposition"].startswith("attachment"), url
        # The override is part of the signature: dropping it breaks the link.
        bare = httpx.URL(await s3.signed_url(key, 60))
        params = {k: v for k, v in bare.params.items() if k != "response-content-disposition"}
        assert (await http.get(bare.copy_with(params=params))).status_code == 403

    # Stored with the object too, for whatever serves it without our link's overrides.
    head = await s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ContentDisposition"] == "attachment"


async def test_s3_links_leave_audio_playable_inline(s3: S3Storage) -> None:
    key = "tracks/u/t.mp3"
    await s3.put_bytes(key, b"ID3" + bytes(64), "audio/mpeg")
    async with httpx.AsyncClient(timeout=10) as http:
        opened = await http.get(await s3.signed_url(key, 60))
        assert opened.status_code == 200
        assert "attachment" not in opened.headers.get("content-disposition", "")
        named = await http.get(await s3.signed_url(key, 60, download_name="song.mp3"))
        assert named.headers["content-disposition"] == 'attachment; filename="song.mp3"'
