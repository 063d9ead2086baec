"""A track from request to finished audio and cover, on Postgres, S3 and Temporal."""

from __future__ import annotations

import io
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import httpx
import pytest
import soundfile as sf
from sqlmodel import col, select

from core.contracts import track_workflow_id
from core.models import Job, JobEvent, Track
from tests.conftest import Stack


async def test_track_goes_from_request_to_playable_audio_and_cover(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, prompt="Warm ambient pad", duration_s=8)
    assert created["status"] == "QUEUED"
    assert created["credits_required"] == 2
    assert await stack.credits(user_id) == 18  # reserved at once

    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    assert job["step"] == "done"
    assert job["temporal_ui_url"].endswith(f"/workflows/track-{created['track_id']}")

    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["provider"] == "synth"
    # The signed link is a real presigned S3 URL that versitygw checks.
    async with httpx.AsyncClient() as plain:
        audio = await plain.get(track["file_url"])
        cover = await plain.get(track["cover_url"])
        tampered = await plain.get(track["file_url"].replace("Signature=", "Signature=0"))
    assert audio.status_code == 200 and cover.status_code == 200
    assert tampered.status_code == 403
    data, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 44100
    assert abs(len(data) / rate - 8) < 0.1
    svg = ET.fromstring(cover.content)
    assert svg.tag.endswith("svg")
    assert (
        track["audio"]["duration_s"] == round(len(data) / rate, 3)
        or abs(track["audio"]["duration_s"] - 8) < 0.1
    )

    keys = await stack.storage.list_keys("")
    assert keys == sorted(
        [
            f"tracks/{user_id}/{created['track_id']}.master.flac",
            f"tracks/{user_id}/{created['track_id']}.stream.mp3",
            f"covers/{user_id}/{created['track_id']}.svg",
        ]
    )
    assert await stack.credits(user_id) == 18  # kept on success

    async with stack.store.sessions() as session:
        db_track = await session.get(Track, uuid.UUID(created["track_id"]))
        db_job = await session.get(Job, uuid.UUID(created["job_id"]))
        events = list(
            await session.exec(
                select(JobEvent).where(col(JobEvent.job_id) == uuid.UUID(created["job_id"]))
            )
        )
    assert db_track is not None and db_job is not None
    assert db_track.status == "COMPLETE" and db_track.sample_rate == 44100
    assert db_job.workflow_id == track_workflow_id(created["track_id"])
    assert db_job.attempts == 1 and not db_job.credits_refunded
    names = [e.event for e in events]
    for expected in (
        "rendering",
        "submitted",
        "audio_ready",
        "audio_checked",
        "audio_stored",
        "cover_stored",
        "complete",
    ):
        assert expected in names, names
    submitted = next(e for e in events if e.event == "submitted")
    assert submitted.provider == "synth" and submitted.provider_run_id and submitted.attempt == 1

    logs = (await stack.http.get(f"/api/jobs/{created['job_id']}/logs", headers=auth)).json()
    assert [entry["event"] for entry in logs] == names

    handle = stack.temporal.client.get_workflow_handle(track_workflow_id(created["track_id"]))
    description = await handle.describe()
    assert description.status is not None and description.status.name == "COMPLETED"


async def test_tracks_are_listed_newest_first_and_paginated(stack: Stack) -> None:
    _, auth = await stack.user(credits=100)
    ids = [(await stack.create_track(auth, prompt=f"Track {n}"))["track_id"] for n in range(3)]
    page = (await stack.http.get("/api/tracks?limit=2", headers=auth)).json()
    assert page["total"] == 3
    assert [item["id"] for item in page["items"]] == ids[::-1][:2]
    rest = (await stack.http.get("/api/tracks?limit=2&offset=2", headers=auth)).json()
    assert [item["id"] for item in rest["items"]] == [ids[0]]


@pytest.mark.parametrize(
    "stack_overrides", [{"s3_public_endpoint": "http://media.example.test:9000"}]
)
async def test_links_are_signed_for_the_public_storage_address(
    stack: Stack, stack_overrides: dict[str, str]
) -> None:
    """Behind compose the app talks to minio:9000 but browsers use another address; the
    signature covers the host, so links must be signed for the public one."""
    _, auth = await stack.user(credits=10)
    created = await stack.create_track(auth, duration_s=5)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "COMPLETE"
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    public = urlsplit(track["file_url"])
    assert public.netloc == "media.example.test:9000"
    # What the public address forwards to: the same server, reached with the public Host.
    internal = urlsplit(stack.settings.s3_endpoint or "")
    async with httpx.AsyncClient() as plain:
        audio = await plain.get(
            f"{internal.scheme}://{internal.netloc}{public.path}?{public.query}",
            headers={"Host": public.netloc},
        )
        wrong_host = await plain.get(
            f"{internal.scheme}://{internal.netloc}{public.path}?{public.query}"
        )
    assert audio.status_code == 200
    assert wrong_host.status_code == 403
