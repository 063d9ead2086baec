"""A finished track is mastered and offered as a FLAC master, an MP3 stream and WAV on
request, through a real worker and Temporal, on the embedded default and on S3."""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pyebur128
import pytest
import soundfile as sf
from sqlmodel import col, select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.models import JobEvent, Plan
from tests.conftest import Stack, eventually
from tests.services import temporal_cli_path
from tests.workflows.histories import capture
from worker import ensure_reconcile_schedule
from workflows.track import TrackWorkflow

TARGET_LUFS = -14.0
CEILING_DBTP = -1.0


def _loudness_and_true_peak(data: np.ndarray, rate: int) -> tuple[float, float]:
    """Measured independently of the product, with libebur128 (BS.1770, 4x oversampled
    true peak)."""
    frames = data if data.ndim == 2 else data[:, None]
    mode = pyebur128.MeasurementMode.MODE_I | pyebur128.MeasurementMode.MODE_TRUE_PEAK
    meter = pyebur128.R128State(frames.shape[1], rate, mode)
    meter.add_frames(np.ascontiguousarray(frames, dtype=np.float64).ravel(), len(frames))
    loudness = float(pyebur128.get_loudness_global(meter))
    peak = max(pyebur128.get_true_peak(meter, c) for c in range(frames.shape[1]))
    return loudness, float(20 * np.log10(peak))


async def _fetch(stack: Stack, url: str, **headers: str) -> httpx.Response:
    """A signed link, fetched as a browser would: in-app links through the app, S3 links
    from the gateway."""
    parts = urlsplit(url)
    if parts.netloc == urlsplit(stack.settings.public_base_url).netloc:
        return await stack.http.get(f"{parts.path}?{parts.query}", headers=headers)
    async with httpx.AsyncClient() as plain:
        return await plain.get(url, headers=headers)


async def _finished(
    stack: Stack, seconds: int = 8
) -> tuple[uuid.UUID, dict[str, str], dict[str, Any]]:
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, prompt="Bright house groove", duration_s=seconds)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    return user_id, auth, track


async def _download(stack: Stack, auth: dict[str, str], track_id: str, fmt: str) -> httpx.Response:
    link = await stack.http.get(f"/api/tracks/{track_id}/download?format={fmt}", headers=auth)
    assert link.status_code == 307, link.text
    return await _fetch(stack, link.headers["location"])


async def test_a_finished_track_is_mastered_and_offers_flac_mp3_and_wav(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    user_id, auth, track = await _finished(stack)
    track_id = track["id"]
    assert track["renditions_state"] == "ready"
    formats = {r["format"]: r for r in track["renditions"]}
    assert list(formats) == ["flac", "mp3", "wav"]
    assert formats["flac"]["bitrate_kbps"] is None and formats["mp3"]["bitrate_kbps"] == 192
    assert not formats["wav"]["stored"] and formats["wav"]["size_bytes"] is None
    # The player and the share page get the stream.
    assert urlsplit(track["file_url"]).path.endswith(".stream.mp3")
    assert track["audio"]["content_type"] == "audio/mpeg"

    flac = await _download(stack, auth, track_id, "flac")
    assert flac.status_code == 200
    assert flac.headers["content-type"] == "audio/flac"
    assert 'filename="bright-house-groove.flac"' in flac.headers["content-disposition"]
    assert len(flac.content) == formats["flac"]["size_bytes"]
    master, rate = sf.read(io.BytesIO(flac.content), dtype="float64")
    assert rate == 44_100
    assert abs(len(master) / rate - 8) < 0.05
    loudness, true_peak = _loudness_and_true_peak(master, rate)
    assert abs(loudness - TARGET_LUFS) <= 0.5, loudness
    assert true_peak <= CEILING_DBTP, true_peak
    assert track["audio"]["loudness_lufs"] == pytest.approx(loudness, abs=0.1)

    mp3 = await _download(stack, auth, track_id, "mp3")
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg"
    assert 'filename="bright-house-groove.mp3"' in mp3.headers["content-disposition"]
    stream, stream_rate = sf.read(io.BytesIO(mp3.content))
    assert stream_rate == 44_100 and abs(len(stream) / stream_rate - len(master) / rate) < 0.05

    wav = await _download(stack, auth, track_id, "wav")
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    assert 'filename="bright-house-groove.wav"' in wav.headers["content-disposition"]
    assert int(wav.headers["content-length"]) == len(wav.content)
    pcm, wav_rate = sf.read(io.BytesIO(wav.content), dtype="float64")
    assert wav_rate == rate and np.array_equal(pcm, master)

    # The player seeks: a range of the stream is exactly those bytes.
    partial = await _fetch(stack, track["file_url"], Range="bytes=1000-4999")
    assert partial.status_code == 206
    assert partial.headers["accept-ranges"] == "bytes"
    assert partial.content == mp3.content[1000:5000]

    # The provider's WAV was replaced, not kept beside the master.
    assert await stack.storage.list_keys(f"tracks/{user_id}/") == sorted(
        [f"tracks/{user_id}/{track_id}.master.flac", f"tracks/{user_id}/{track_id}.stream.mp3"]
    )
    async with stack.store.sessions() as session:
        events = list(
            await session.exec(
                select(JobEvent).where(
                    col(JobEvent.job_id) == uuid.UUID(track["job_id"]),
                    col(JobEvent.event) == "audio_mastered",
                )
            )
        )
    assert len(events) == 1
    assert "LUFS ->" in events[0].message and "-14.0 LUFS" in events[0].message
    assert events[0].data is not None and events[0].data["loudness_before_lufs"] is not None


async def test_downloads_refuse_unknown_formats_other_users_and_forged_links(
    embedded_stack: Stack,
) -> None:
    stack = embedded_stack
    _, auth, track = await _finished(stack, seconds=5)
    track_id = track["id"]
    bad = await stack.http.get(f"/api/tracks/{track_id}/download?format=ogg", headers=auth)
    assert bad.status_code == 422 and "format" in bad.text
    _, stranger = await stack.user()
    theirs = await stack.http.get(f"/api/tracks/{track_id}/download?format=mp3", headers=stranger)
    assert theirs.status_code == 404
    anonymous = await stack.http.get(f"/api/tracks/{track_id}/download?format=mp3")
    assert anonymous.status_code == 401
    default = await stack.http.get(f"/api/tracks/{track_id}/download", headers=auth)
    assert default.status_code == 307 and ".master.flac" in default.headers["location"]

    wav_link = next(r["url"] for r in track["renditions"] if r["format"] == "wav")
    forged = wav_link.replace("sig=", "sig=0")
    assert (await _fetch(stack, forged)).status_code == 403
    other_track = wav_link.replace(track_id, str(uuid.uuid4()))
    assert (await _fetch(stack, other_track)).status_code == 403
    assert (await _fetch(stack, wav_link)).status_code == 200


async def test_renditions_on_s3_have_their_content_types_and_seek(stack: Stack) -> None:
    user_id, auth, track = await _finished(stack, seconds=6)
    mp3 = await _fetch(stack, track["file_url"])
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg"
    partial = await _fetch(stack, track["file_url"], Range="bytes=0-99")
    assert partial.status_code == 206 and partial.content == mp3.content[:100]
    flac = await _download(stack, auth, track["id"], "flac")
    assert flac.status_code == 200 and flac.headers["content-type"] == "audio/flac"
    wav = await _download(stack, auth, track["id"], "wav")
    assert wav.status_code == 200
    pcm, rate = sf.read(io.BytesIO(wav.content))
    assert rate == 44_100 and abs(len(pcm) / rate - 6) < 0.1
    assert sorted(await stack.storage.list_keys(f"tracks/{user_id}/")) == sorted(
        [
            f"tracks/{user_id}/{track['id']}.master.flac",
            f"tracks/{user_id}/{track['id']}.stream.mp3",
        ]
    )


async def test_a_cancel_while_mastering_leaves_the_track_complete_and_playing(
    embedded_stack: Stack,
) -> None:
    """An operator cancels the workflow after COMPLETE, while the master is being made:
    the job stays COMPLETE and charged, and the provider's file keeps playing."""
    stack = embedded_stack
    user_id, auth = await stack.user(credits=100, plan=Plan.PRO)
    created = await stack.create_track(auth, prompt="Long drone", duration_s=300)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=120, mastered=False)
    assert job["status"] == "COMPLETE"
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["renditions_state"] == "pending", "mastering ended before the test looked"
    assert [r["format"] for r in track["renditions"]] == ["wav"]  # the provider's file
    early = await stack.http.get(
        f"/api/tracks/{created['track_id']}/download?format=mp3", headers=auth
    )
    assert early.status_code == 409 and "being made" in early.json()["detail"]

    handle = stack.temporal.client.get_workflow_handle(created["workflow_id"])
    await handle.cancel()
    await handle.result()  # mastering stopped; the workflow ends without failing
    history = await handle.fetch_history()
    replayed = await Replayer(
        workflows=[TrackWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None
    capture("mastering_cancelled", history.to_json())

    job = (await stack.http.get(f"/api/jobs/{created['job_id']}", headers=auth)).json()
    assert job["status"] == "COMPLETE" and not job["credits_refunded"]
    assert await stack.credits(user_id) == 100 - created["credits_required"]
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["renditions_state"] == "failed"
    playing = await _fetch(stack, track["file_url"])
    assert playing.status_code == 200
    assert sf.info(io.BytesIO(playing.content)).duration == pytest.approx(300, abs=0.5)
    assert await stack.storage.list_keys(f"tracks/{user_id}/") == [
        f"tracks/{user_id}/{created['track_id']}.wav"
    ]


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("start_worker", [False])  # real worker processes, one killed
@pytest.mark.parametrize("stack_overrides", [{"heartbeat_timeout_s": 2}])
async def test_a_worker_killed_between_storing_the_stream_and_the_master_leaves_one_set(
    stack: Stack, start_worker: bool, stack_overrides: Any, worker_command: list[str]
) -> None:
    """SIGKILL lands after the MP3 stream is stored, while the FLAC master is uploading
    and before the step is recorded: another worker masters again, writes the same bytes
    at the same keys, and the track ends with one master, one stream and one charge."""
    user_id, auth = await stack.user(credits=100, plan=Plan.PRO)
    first = _spawn(worker_command, stack.env)
    second: subprocess.Popen[bytes] | None = None
    try:
        created = await stack.create_track(auth, prompt="Slow tide", duration_s=300)
        prefix = f"tracks/{user_id}/{created['track_id']}"
        stream_key, master_key = f"{prefix}.stream.mp3", f"{prefix}.master.flac"

        async def stream_stored() -> bool:
            return await stack.storage.exists(stream_key)

        await eventually(stream_stored, timeout_s=120, what="the MP3 stream to be stored")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        stream_before_kill = await stack.storage.get_bytes(stream_key)
        assert not await stack.storage.exists(master_key), "the kill came after the upload"
        job = await stack.wait_for_job(created["job_id"], auth, mastered=False)
        assert job["status"] == "COMPLETE"
        track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
        assert track["renditions_state"] == "pending"

        second = _spawn(worker_command, stack.env)
        await stack.wait_for_job(created["job_id"], auth, timeout_s=120)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)

    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["renditions_state"] == "ready"
    assert await stack.storage.get_bytes(stream_key) == stream_before_kill
    stream = sf.info(io.BytesIO(stream_before_kill))
    assert abs(stream.duration - 300) < 0.05 and stream.samplerate == 44_100
    assert len(stream_before_kill) < 8_000_000  # five minutes of stream under 8 MB
    assert await stack.storage.list_keys(f"tracks/{user_id}/") == sorted([master_key, stream_key])
    master = sf.info(io.BytesIO(await stack.storage.get_bytes(master_key)))
    assert master.format == "FLAC" and abs(master.duration - 300) < 0.05
    async with stack.store.sessions() as session:
        mastered = list(
            await session.exec(
                select(JobEvent).where(
                    col(JobEvent.job_id) == uuid.UUID(created["job_id"]),
                    col(JobEvent.event) == "audio_mastered",
                    col(JobEvent.level) == "info",
                )
            )
        )
    assert [e.attempt for e in mastered] == [2], "the second worker's attempt is the one"
    assert await stack.credits(user_id) == 100 - created["credits_required"]


@pytest.mark.parametrize("stack_overrides", [{"reconcile_interval_s": 1}])
async def test_a_terminate_while_mastering_is_reconciled_and_the_track_keeps_playing(
    embedded_stack: Stack, stack_overrides: Any
) -> None:
    """`temporal workflow terminate` ends the run mid-mastering without running workflow
    code: the reconciler records that mastering ended; the job stays COMPLETE and paid."""
    stack = embedded_stack
    await ensure_reconcile_schedule(stack.temporal.client, stack.settings)
    user_id, auth = await stack.user(credits=100, plan=Plan.PRO)
    created = await stack.create_track(auth, prompt="Long drone", duration_s=300)
    await stack.wait_for_job(created["job_id"], auth, timeout_s=120, mastered=False)
    terminated = await asyncio.to_thread(
        subprocess.run,
        [
            str(temporal_cli_path()), "workflow", "terminate",
            "--workflow-id", created["workflow_id"], "--reason", "ops",
            "--address", stack.settings.temporal_address,
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert terminated.returncode == 0, terminated.stderr

    async def reconciled() -> bool:
        track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
        return bool(track["renditions_state"] == "failed")

    await eventually(reconciled, timeout_s=20, what="the reconciler to end the mastering")
    job = (await stack.http.get(f"/api/jobs/{created['job_id']}", headers=auth)).json()
    assert job["status"] == "COMPLETE" and not job["credits_refunded"]
    assert await stack.credits(user_id) == 100 - created["credits_required"]
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert (await _fetch(stack, track["file_url"])).status_code == 200
    logs = (await stack.http.get(f"/api/jobs/{created['job_id']}/logs", headers=auth)).json()
    assert any(e["event"] == "reconciled" and "terminated" in e["message"] for e in logs)
