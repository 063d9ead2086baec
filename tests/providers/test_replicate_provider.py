"""ReplicateProvider with the real replicate client against a local fake of Replicate's API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from activities.providers.base import JobState, PollResult, ProviderError
from activities.providers.replicate import REPLICATE_MODELS, ReplicateProvider
from core.contracts import ErrorCode, GenerationRequest, Submission
from tests.fakes import Audio, Fail, Job, Stall
from tests.fakes.replicate_server import ReplicateFake

TOKEN = "r8_Secret0123456789abcdef"
INSTRUMENTAL = GenerationRequest(prompt="warm lo-fi piano", duration_s=5, seed=42)
VOCALS = GenerationRequest(
    prompt="indie pop, bright", duration_s=30, has_vocals=True, lyrics="[Verse]\nla la la"
)


@pytest.fixture
def fake() -> Iterator[ReplicateFake]:
    with ReplicateFake(key=TOKEN) as server:
        yield server


@pytest.fixture
async def provider(fake: ReplicateFake) -> AsyncIterator[ReplicateProvider]:
    p = ReplicateProvider(api_token=TOKEN, base_url=fake.url, request_timeout_s=5)
    yield p
    await p.aclose()


async def submit(provider: ReplicateProvider, request: GenerationRequest) -> Submission:
    run_id, urls = await provider.submit(request, track_id=str(uuid.uuid4()))
    return Submission(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        provider=provider.name,
        model=provider.model_for(request),
        run_id=run_id,
        request=request,
        urls=urls,
    )


async def poll_to_end(
    provider: ReplicateProvider, sub: Submission
) -> tuple[PollResult, list[PollResult]]:
    seen: list[PollResult] = []
    for _ in range(50):
        result = await provider.poll(sub)
        seen.append(result)
        if result.state not in (JobState.QUEUED, JobState.RUNNING):
            return result, seen
    raise AssertionError(f"prediction never finished: {seen}")


async def test_instrumental_create_poll_download(
    provider: ReplicateProvider, fake: ReplicateFake, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(queued_polls=1, running_polls=3)])
    sub = await submit(provider, INSTRUMENTAL)

    assert sub.urls["get"] == f"{fake.url}/v1/predictions/{sub.run_id}"
    assert sub.urls["cancel"] == f"{fake.url}/v1/predictions/{sub.run_id}/cancel"
    assert fake.apps == ["meta/musicgen"]
    assert fake.inputs == [
        {"prompt": "warm lo-fi piano", "output_format": "wav", "duration": 5, "seed": 42}
    ]

    result, seen = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED and result.progress == 1.0
    assert [r.state for r in seen] == [JobState.QUEUED] + [JobState.RUNNING] * 3 + [
        JobState.SUCCEEDED
    ]
    # Progress comes from the tqdm bar in the prediction's logs.
    running = [r.progress or 0.0 for r in seen if r.state is JobState.RUNNING]
    assert running == sorted(running) and all(0 < p < 1 for p in running)

    beats: list[float] = []
    dest = tmp_path / "track.wav"
    audio = await provider.download(sub, dest, beats.append)
    assert (audio.extension, audio.content_type) == ("wav", "audio/wav")
    assert sf.info(dest).duration == pytest.approx(5.0, abs=0.01)
    assert beats[-1] == 1.0
    assert fake.submissions == 1 and fake.downloads == 1


async def test_vocals_use_minimax_and_list_output(
    provider: ReplicateProvider, fake: ReplicateFake, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(duration_s=3, output_list=True)])
    sub = await submit(provider, VOCALS)
    assert fake.apps == ["minimax/music-1.5"]
    assert fake.inputs == [{"prompt": "indie pop, bright", "lyrics": "[Verse]\nla la la"}]
    await poll_to_end(provider, sub)
    await provider.download(sub, tmp_path / "song.wav", lambda _: None)
    assert sf.info(tmp_path / "song.wav").duration == pytest.approx(3.0, abs=0.01)


async def test_pinned_version_creates_through_predictions(fake: ReplicateFake) -> None:
    provider = ReplicateProvider(
        api_token=TOKEN, base_url=fake.url, instrumental_model="meta/musicgen:abc123"
    )
    try:
        sub = await submit(provider, INSTRUMENTAL)
        result, _ = await poll_to_end(provider, sub)
    finally:
        await provider.aclose()
    assert result.state is JobState.SUCCEEDED
    assert fake.apps == ["unknown/versioned"]  # POST /v1/predictions, not the model route
    assert fake.versions[sub.run_id] == "abc123"


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (401, ErrorCode.UNAUTHORIZED, False),
        (403, ErrorCode.FORBIDDEN, False),
        (422, ErrorCode.INVALID, False),
        (500, ErrorCode.SERVER, True),
        (503, ErrorCode.SERVER, True),
    ],
)
async def test_create_http_errors_are_classified(
    provider: ReplicateProvider,
    fake: ReplicateFake,
    status: int,
    code: ErrorCode,
    retryable: bool,
) -> None:
    fake.script(submit=[Fail(status)])
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL, track_id="t")
    assert caught.value.code is code
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert fake.submit_attempts == 1
    assert fake.submissions == 0


async def test_rate_limited_create_keeps_retry_after(
    provider: ReplicateProvider, fake: ReplicateFake
) -> None:
    fake.script(submit=[Fail(429, times=10, retry_after=9)])
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL, track_id="t")
    assert caught.value.code is ErrorCode.RATE_LIMITED
    assert caught.value.retry_after_s == 9  # ReplicateError alone would have dropped it
    assert fake.submit_attempts == 1


async def test_rate_limited_poll_is_raised_at_once(
    provider: ReplicateProvider, fake: ReplicateFake
) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    fake.script(poll=[Fail(429, times=10, retry_after=5)])
    with pytest.raises(ProviderError) as caught:
        await provider.poll(sub)

    assert caught.value.code is ErrorCode.RATE_LIMITED
    assert caught.value.retry_after_s == 5
    # replicate's RetryTransport would sleep Retry-After between ten GET attempts (45 s here).
    assert fake.polls == 1


async def test_server_errors_then_ok(provider: ReplicateProvider, fake: ReplicateFake) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    fake.script(poll=[Fail(500), Fail(503, retry_after=1)])
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            await provider.poll(sub)
        assert caught.value.code is ErrorCode.SERVER and caught.value.retryable
    assert fake.polls == 2  # the 503 was not retried inside the library
    result, _ = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED


async def test_failed_prediction_polls_failed(
    provider: ReplicateProvider, fake: ReplicateFake, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(running_polls=1, fail="CUDA out of memory")])
    sub = await submit(provider, INSTRUMENTAL)
    result, _ = await poll_to_end(provider, sub)
    assert result.state is JobState.FAILED
    assert result.error == "CUDA out of memory"
    with pytest.raises(ProviderError) as caught:
        await provider.download(sub, tmp_path / "x.wav", lambda _: None)
    assert caught.value.code is ErrorCode.JOB_FAILED


async def test_slow_prediction_stays_processing(
    provider: ReplicateProvider, fake: ReplicateFake
) -> None:
    fake.script(jobs=[Job(running_polls=0, running_s=0.6)])
    sub = await submit(provider, INSTRUMENTAL)
    assert (await provider.poll(sub)).state is JobState.RUNNING
    await asyncio.sleep(0.7)
    assert (await provider.poll(sub)).state is JobState.SUCCEEDED


async def test_cancel_hits_the_cancel_endpoint(
    provider: ReplicateProvider, fake: ReplicateFake
) -> None:
    fake.script(jobs=[Job(running_polls=100)])
    sub = await submit(provider, INSTRUMENTAL)
    await provider.cancel(sub)
    assert fake.cancels == 1
    assert fake.cancelled_ids == [sub.run_id]
    assert (await provider.poll(sub)).state is JobState.CANCELLED


async def test_cancel_errors_are_raised(provider: ReplicateProvider, fake: ReplicateFake) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    fake.script(cancel=[Fail(500)])
    with pytest.raises(ProviderError) as caught:
        await provider.cancel(sub)
    assert caught.value.code is ErrorCode.SERVER


async def test_a_new_worker_resumes_from_the_submission_alone(
    fake: ReplicateFake, tmp_path: Path
) -> None:
    first = ReplicateProvider(api_token=TOKEN, base_url=fake.url)
    run_id, _ = await first.submit(INSTRUMENTAL, track_id="t")
    await first.aclose()
    del first

    stored = Submission(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        provider="replicate",
        model="meta/musicgen",
        run_id=run_id,
        request=INSTRUMENTAL,
    )
    second = ReplicateProvider(api_token=TOKEN, base_url=fake.url)
    try:
        result, _ = await poll_to_end(second, stored)
        assert result.state is JobState.SUCCEEDED
        await second.download(stored, tmp_path / "resumed.wav", lambda _: None)
    finally:
        await second.aclose()
    assert sf.info(tmp_path / "resumed.wav").frames > 0
    assert fake.submissions == 1


def test_fresh_event_loops_get_their_own_client(fake: ReplicateFake, tmp_path: Path) -> None:
    provider = ReplicateProvider(api_token=TOKEN, base_url=fake.url)

    async def start() -> Submission:
        try:
            return await submit(provider, INSTRUMENTAL)
        finally:
            await provider.aclose()

    async def finish(sub: Submission) -> JobState:
        try:
            result, _ = await poll_to_end(provider, sub)
            await provider.download(sub, tmp_path / "x.wav", lambda _: None)
            return result.state
        finally:
            await provider.aclose()

    sub = asyncio.run(start())
    assert asyncio.run(finish(sub)) is JobState.SUCCEEDED
    assert asyncio.run(finish(sub)) is JobState.SUCCEEDED


async def test_health(fake: ReplicateFake) -> None:
    good = ReplicateProvider(api_token=TOKEN, base_url=fake.url)
    bad = ReplicateProvider(api_token="r8_wrong_token_0000", base_url=fake.url)
    none = ReplicateProvider(api_token=None, base_url=fake.url)
    try:
        assert (await good.health()).status == "ok"
        health = await bad.health()
        assert health.status == "fail"
        assert health.error is not None and "401" in health.error
        assert "r8_wrong_token_0000" not in health.error
        assert (await none.health()).status == "unconfigured"
        fake.script(account=[Fail(503)])
        assert (await good.health()).status == "fail"
    finally:
        await good.aclose()
        await bad.aclose()


async def test_secrets_never_appear_in_errors(fake: ReplicateFake) -> None:
    secret = "r8_wrong_secret_5d1e"
    bad = ReplicateProvider(api_token=secret, base_url=fake.url)
    try:
        with pytest.raises(ProviderError) as caught:
            await bad.submit(INSTRUMENTAL, track_id="t")
    finally:
        await bad.aclose()
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert secret not in str(caught.value) and secret not in repr(caught.value.args)

    good = ReplicateProvider(api_token=TOKEN, base_url=fake.url)
    fake.script(submit=[Fail(500, detail=f"bad header Bearer {TOKEN}")])
    try:
        with pytest.raises(ProviderError) as caught:
            await good.submit(INSTRUMENTAL, track_id="t")
    finally:
        await good.aclose()
    assert TOKEN not in str(caught.value)


async def test_stalled_request_times_out_retryably(fake: ReplicateFake) -> None:
    provider = ReplicateProvider(api_token=TOKEN, base_url=fake.url, request_timeout_s=0.5)
    try:
        sub = await submit(provider, INSTRUMENTAL)
        fake.script(poll=[Stall(3)])
        with pytest.raises(ProviderError) as caught:
            await provider.poll(sub)
    finally:
        await provider.aclose()
    assert caught.value.code is ErrorCode.TIMEOUT
    assert caught.value.retryable


def test_cannot_serve_from_the_model_table() -> None:
    provider = ReplicateProvider(api_token=TOKEN)
    assert provider.cannot_serve(INSTRUMENTAL) is None
    assert provider.cannot_serve(VOCALS) is None
    limit = REPLICATE_MODELS["meta/musicgen"].max_duration_s
    too_long = provider.cannot_serve(INSTRUMENTAL.model_copy(update={"duration_s": limit + 1}))
    assert too_long is not None and str(limit) in too_long
    assert provider.cannot_serve(VOCALS.model_copy(update={"lyrics": "  "})) is not None
    with pytest.raises(ValueError, match="unknown Replicate model"):
        ReplicateProvider(api_token=TOKEN, vocals_model="someone/else")


@pytest.mark.parametrize("kind", [Audio.BROKEN, Audio.SHORT, Audio.SILENT])
async def test_bad_audio_is_downloaded_as_served(
    provider: ReplicateProvider, fake: ReplicateFake, tmp_path: Path, kind: Audio
) -> None:
    fake.script(jobs=[Job(audio=kind)])
    sub = await submit(provider, INSTRUMENTAL)
    await poll_to_end(provider, sub)
    dest = tmp_path / "bad.wav"
    await provider.download(sub, dest, lambda _: None)
    if kind is Audio.BROKEN:
        with pytest.raises(sf.LibsndfileError):
            sf.read(dest)
    elif kind is Audio.SHORT:
        assert sf.info(dest).duration == pytest.approx(1.0)
    else:
        data, _ = sf.read(dest)
        assert not np.any(data)
