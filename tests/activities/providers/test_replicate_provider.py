"""What only ReplicateProvider does, with the real replicate client against a local fake of
Replicate's API. The behaviours it shares with fal are in test_hosted_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import soundfile as sf

from activities.providers.base import JobState, ProviderError
from activities.providers.replicate import ReplicateProvider
from core.contracts import ErrorCode
from tests.activities.providers.support import (
    FAKE_DOWNLOADS,
    INSTRUMENTAL,
    VOCALS,
    poll_to_end,
    submit,
)
from tests.fakes import Job
from tests.fakes.replicate_server import ReplicateFake

pytestmark = pytest.mark.unit

TOKEN = "r8_Secret0123456789abcdef"


@pytest.fixture
def fake() -> Iterator[ReplicateFake]:
    with ReplicateFake(key=TOKEN) as server:
        yield server


@pytest.fixture
async def provider(fake: ReplicateFake) -> AsyncIterator[ReplicateProvider]:
    p = ReplicateProvider(
        api_token=TOKEN, base_url=fake.url, request_timeout_s=5, downloads=FAKE_DOWNLOADS
    )
    yield p
    await p.aclose()


async def test_progress_comes_from_the_logs(
    provider: ReplicateProvider, fake: ReplicateFake
) -> None:
    fake.script(jobs=[Job(queued_polls=1, running_polls=3)])
    sub = await submit(provider, INSTRUMENTAL)
    result, seen = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED and result.progress == 1.0
    assert [r.state for r in seen] == [JobState.QUEUED] + [JobState.RUNNING] * 3 + [
        JobState.SUCCEEDED
    ]
    # The tqdm bar at the end of a processing prediction's logs.
    running = [r.progress or 0.0 for r in seen if r.state is JobState.RUNNING]
    assert running == sorted(running) and all(0 < p < 1 for p in running)


async def test_list_output_is_downloaded(
    provider: ReplicateProvider, fake: ReplicateFake, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(duration_s=3, output_list=True)])
    sub = await submit(provider, VOCALS)
    assert fake.apps == ["minimax/music-1.5"]
    await poll_to_end(provider, sub)
    await provider.download(sub, tmp_path / "song.wav", lambda _: None)
    assert sf.info(tmp_path / "song.wav").duration == pytest.approx(3.0, abs=0.01)


async def test_the_poll_that_sees_the_end_names_the_audio_and_the_download_goes_there(
    provider: ReplicateProvider, fake: ReplicateFake, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(duration_s=3, running_polls=1)])
    sub = await submit(provider, INSTRUMENTAL)
    result, seen = await poll_to_end(provider, sub)
    assert result.audio_url is not None
    assert all(r.audio_url is None for r in seen[:-1])  # only a finished job names it
    reads = fake.polls
    await provider.download(sub, tmp_path / "song.wav", lambda _: None, result.audio_url)
    assert fake.polls == reads  # no second read of the prediction
    assert sf.info(tmp_path / "song.wav").duration == pytest.approx(3.0, abs=0.01)
    # Without it (a webhook said the job ended), the download asks the provider once.
    await provider.download(sub, tmp_path / "again.wav", lambda _: None)
    assert fake.polls == reads + 1
    # A URL that no longer answers (expired before a late retry) is asked for afresh.
    stale = result.audio_url.rsplit("/", 1)[0] + "/expired.wav"
    await provider.download(sub, tmp_path / "late.wav", lambda _: None, stale)
    assert fake.polls == reads + 2
    assert sf.info(tmp_path / "late.wav").duration == pytest.approx(3.0, abs=0.01)


async def test_pinned_version_creates_through_predictions(fake: ReplicateFake) -> None:
    provider = ReplicateProvider(
        api_token=TOKEN,
        base_url=fake.url,
        instrumental_model="meta/musicgen:abc123",
        downloads=FAKE_DOWNLOADS,
    )
    try:
        sub = await submit(provider, INSTRUMENTAL)
        result, _ = await poll_to_end(provider, sub)
    finally:
        await provider.aclose()
    assert result.state is JobState.SUCCEEDED
    assert fake.apps == ["unknown/versioned"]  # POST /v1/predictions, not the model route
    assert fake.versions[sub.run_id] == "abc123"


async def test_failed_prediction_is_not_downloaded(
    provider: ReplicateProvider, fake: ReplicateFake, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(running_polls=1, fail="CUDA out of memory")])
    sub = await submit(provider, INSTRUMENTAL)
    result, _ = await poll_to_end(provider, sub)
    assert result.state is JobState.FAILED
    with pytest.raises(ProviderError) as caught:
        await provider.download(sub, tmp_path / "x.wav", lambda _: None)
    assert caught.value.code is ErrorCode.JOB_FAILED
    assert fake.downloads == 0
