"""FalProvider with the real fal-client against a local fake of fal's queue API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from activities.providers.base import JobState, PollResult, ProviderError
from activities.providers.fal import FalProvider
from core.contracts import ErrorCode, GenerationRequest, Submission
from tests.fakes import Audio, Fail, Job, Stall
from tests.fakes.fal_server import FalFake

KEY = "fal-key-id:fal-key-secret-7f3a9c"
INSTRUMENTAL = GenerationRequest(prompt="warm lo-fi piano", duration_s=5)
VOCALS = GenerationRequest(
    prompt="indie pop, bright", duration_s=30, has_vocals=True, lyrics="[Verse]\nla la la"
)


@pytest.fixture
def fake() -> Iterator[FalFake]:
    with FalFake(key=KEY) as server:
        yield server


@pytest.fixture
async def provider(fake: FalFake) -> AsyncIterator[FalProvider]:
    p = FalProvider(key=KEY, queue_url=fake.url, request_timeout_s=5)
    yield p
    await p.aclose()


def submission_for(
    provider: FalProvider, request: GenerationRequest, run_id: str, urls: dict[str, str]
) -> Submission:
    return Submission(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        provider=provider.name,
        model=provider.model_for(request),
        run_id=run_id,
        request=request,
        urls=urls,
    )


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


async def submit(provider: FalProvider, request: GenerationRequest) -> Submission:
    run_id, urls = await provider.submit(request, track_id=str(uuid.uuid4()))
    return submission_for(provider, request, run_id, urls)


async def poll_to_end(provider: FalProvider, sub: Submission) -> tuple[PollResult, list[JobState]]:
    seen: list[JobState] = []
    for _ in range(50):
        result = await provider.poll(sub)
        seen.append(result.state)
        if result.state not in (JobState.QUEUED, JobState.RUNNING):
            return result, seen
    raise AssertionError(f"job never finished: {seen}")


async def test_instrumental_submit_poll_download(
    provider: FalProvider, fake: FalFake, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(queued_polls=1, running_polls=2)])
    sub = await submit(provider, INSTRUMENTAL)

    assert set(sub.urls) == {"status_url", "response_url", "cancel_url"}
    assert sub.urls["status_url"].startswith(fake.url)
    assert fake.apps == ["fal-ai/stable-audio"]
    assert fake.inputs == [{"prompt": "warm lo-fi piano", "seconds_total": 5}]

    result, seen = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED
    assert seen == [JobState.QUEUED, JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED]

    beats: list[float] = []
    dest = tmp_path / "track.wav"
    audio = await provider.download(sub, dest, beats.append)
    assert (audio.extension, audio.content_type) == ("wav", "audio/wav")
    info = sf.info(dest)
    assert info.duration == pytest.approx(5.0, abs=0.01)
    assert beats and beats[-1] == 1.0
    assert files_in(tmp_path) == ["track.wav"]
    assert fake.submissions == 1
    assert fake.downloads == 1


async def test_vocals_use_minimax_with_lyrics(
    provider: FalProvider, fake: FalFake, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(duration_s=3)])
    sub = await submit(provider, VOCALS)
    assert fake.apps == ["fal-ai/minimax-music/v2"]
    assert fake.inputs == [{"prompt": "indie pop, bright", "lyrics": "[Verse]\nla la la"}]
    # The request URLs drop the model's subpath, as fal's do.
    assert "/fal-ai/minimax-music/requests/" in sub.urls["status_url"]

    result, _ = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED
    await provider.download(sub, tmp_path / "song.wav", lambda _: None)
    assert sf.info(tmp_path / "song.wav").duration == pytest.approx(3.0, abs=0.01)


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
async def test_submit_http_errors_are_classified(
    provider: FalProvider, fake: FalFake, status: int, code: ErrorCode, retryable: bool
) -> None:
    fake.script(submit=[Fail(status)])
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL, track_id="t")
    assert caught.value.code is code
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    # One request, no job: the library did not retry behind our back.
    assert fake.submit_attempts == 1
    assert fake.submissions == 0


async def test_rate_limit_is_raised_at_once_with_retry_after(
    provider: FalProvider, fake: FalFake
) -> None:
    fake.script(submit=[Fail(429, times=10, retry_after=7)])
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL, track_id="t")

    assert caught.value.code is ErrorCode.RATE_LIMITED
    assert caught.value.retryable
    assert caught.value.retry_after_s == 7
    # fal-client alone would retry 429 ten times with backoff; ours gives up at once.
    assert fake.submit_attempts == 1


async def test_rate_limit_then_ok_when_the_caller_retries(
    provider: FalProvider, fake: FalFake
) -> None:
    fake.script(submit=[Fail(429, times=2, retry_after=1)])
    errors = []
    for _ in range(3):
        try:
            run_id, _ = await provider.submit(INSTRUMENTAL, track_id="t")
            break
        except ProviderError as exc:
            errors.append(exc.code)
    assert errors == [ErrorCode.RATE_LIMITED, ErrorCode.RATE_LIMITED]
    assert run_id in fake.jobs
    assert fake.submit_attempts == 3
    assert fake.submissions == 1


async def test_poll_errors_are_retryable_and_bounded(provider: FalProvider, fake: FalFake) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    fake.script(poll=[Fail(500, times=2), Fail(429, retry_after="2")])

    for expected in (ErrorCode.SERVER, ErrorCode.SERVER, ErrorCode.RATE_LIMITED):
        with pytest.raises(ProviderError) as caught:
            await provider.poll(sub)
        assert caught.value.code is expected
        assert caught.value.retryable
    assert caught.value.retry_after_s == 2

    result, _ = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED


async def test_failed_job_polls_failed(provider: FalProvider, fake: FalFake) -> None:
    fake.script(jobs=[Job(running_polls=1, fail="CUDA out of memory")])
    sub = await submit(provider, INSTRUMENTAL)
    result, seen = await poll_to_end(provider, sub)
    assert seen == [JobState.RUNNING, JobState.FAILED]
    assert result.error is not None and "CUDA out of memory" in result.error


async def test_slow_job_stays_running(provider: FalProvider, fake: FalFake) -> None:
    fake.script(jobs=[Job(running_polls=0, running_s=0.6)])
    sub = await submit(provider, INSTRUMENTAL)
    assert (await provider.poll(sub)).state is JobState.RUNNING
    await asyncio.sleep(0.7)
    assert (await provider.poll(sub)).state is JobState.SUCCEEDED


async def test_cancel_hits_the_cancel_endpoint(provider: FalProvider, fake: FalFake) -> None:
    fake.script(jobs=[Job(running_polls=100)])
    sub = await submit(provider, INSTRUMENTAL)
    assert (await provider.poll(sub)).state is JobState.RUNNING

    await provider.cancel(sub)
    assert fake.cancels == 1
    assert fake.cancelled_ids == [sub.run_id]
    assert fake.jobs[sub.run_id].cancelled
    # fal reports a cancelled request as COMPLETED with an error.
    assert (await provider.poll(sub)).state is JobState.FAILED


async def test_cancel_after_completion_is_a_no_op(provider: FalProvider, fake: FalFake) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    await poll_to_end(provider, sub)
    await provider.cancel(sub)  # fal answers 400 ALREADY_COMPLETED
    assert fake.cancels == 1


async def test_cancel_server_error_is_raised(provider: FalProvider, fake: FalFake) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    fake.script(cancel=[Fail(502)])
    with pytest.raises(ProviderError) as caught:
        await provider.cancel(sub)
    assert caught.value.code is ErrorCode.SERVER


async def test_a_new_worker_resumes_from_the_submission_alone(
    fake: FalFake, tmp_path: Path
) -> None:
    first = FalProvider(key=KEY, queue_url=fake.url)
    fake.script(jobs=[Job(running_polls=1)])
    run_id, _ = await first.submit(VOCALS, track_id="t")
    await first.aclose()
    del first

    # What survives in workflow history: the id and model, not the provider object.
    stored = Submission(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        provider="fal",
        model="fal-ai/minimax-music/v2",
        run_id=run_id,
        request=VOCALS,
    )
    second = FalProvider(key=KEY, queue_url=fake.url)
    try:
        result, _ = await poll_to_end(second, stored)
        assert result.state is JobState.SUCCEEDED
        audio = await second.download(stored, tmp_path / "resumed.wav", lambda _: None)
    finally:
        await second.aclose()
    assert audio.extension == "wav"
    assert sf.info(tmp_path / "resumed.wav").frames > 0
    assert fake.submissions == 1


def test_fresh_event_loops_get_their_own_client(fake: FalFake, tmp_path: Path) -> None:
    provider = FalProvider(key=KEY, queue_url=fake.url)

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


async def test_health(fake: FalFake) -> None:
    good = FalProvider(key=KEY, queue_url=fake.url)
    bad = FalProvider(key="fal-wrong-key-0000", queue_url=fake.url)
    none = FalProvider(key=None, queue_url=fake.url)
    try:
        assert (await good.health()).status == "ok"
        health = await bad.health()
        assert health.status == "fail"
        assert health.error is not None and "401" in health.error
        assert "fal-wrong-key-0000" not in health.error
        assert (await none.health()).status == "unconfigured"
    finally:
        await good.aclose()
        await bad.aclose()
    assert not none.configured


async def test_unconfigured_provider_refuses_to_submit(fake: FalFake) -> None:
    provider = FalProvider(key=None, queue_url=fake.url)
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL, track_id="t")
    assert caught.value.code is ErrorCode.UNCONFIGURED
    assert fake.submit_attempts == 0


async def test_secrets_never_appear_in_errors(fake: FalFake) -> None:
    secret = "fal-wrong-secret-5d1e"
    bad = FalProvider(key=secret, queue_url=fake.url)
    try:
        with pytest.raises(ProviderError) as caught:
            await bad.submit(INSTRUMENTAL, track_id="t")
    finally:
        await bad.aclose()
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert fake.auth_failures == 1
    assert secret not in str(caught.value) and secret not in repr(caught.value.args)

    # Even a server that echoes the key back gets redacted.
    good = FalProvider(key=KEY, queue_url=fake.url)
    fake.script(submit=[Fail(500, detail=f"bad header Key {KEY}")])
    try:
        with pytest.raises(ProviderError) as caught:
            await good.submit(INSTRUMENTAL, track_id="t")
    finally:
        await good.aclose()
    assert KEY not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_stalled_request_times_out_retryably(fake: FalFake) -> None:
    provider = FalProvider(key=KEY, queue_url=fake.url, request_timeout_s=0.5)
    try:
        sub = await submit(provider, INSTRUMENTAL)
        fake.script(poll=[Stall(3)])
        with pytest.raises(ProviderError) as caught:
            await provider.poll(sub)
    finally:
        await provider.aclose()
    assert caught.value.code is ErrorCode.TIMEOUT
    assert caught.value.retryable


async def test_unreachable_queue_is_a_timeout() -> None:
    with FalFake(key=KEY) as gone:
        url = gone.url
    provider = FalProvider(key=KEY, queue_url=url)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.submit(INSTRUMENTAL, track_id="t")
    finally:
        await provider.aclose()
    assert caught.value.code is ErrorCode.TIMEOUT
    assert caught.value.retryable


def test_cannot_serve_from_the_model_table() -> None:
    provider = FalProvider(key=KEY)
    assert provider.cannot_serve(INSTRUMENTAL) is None
    assert provider.cannot_serve(VOCALS) is None
    too_long = provider.cannot_serve(INSTRUMENTAL.model_copy(update={"duration_s": 120}))
    assert too_long is not None and "47" in too_long
    no_lyrics = provider.cannot_serve(VOCALS.model_copy(update={"lyrics": None}))
    assert no_lyrics is not None and "lyrics" in no_lyrics
    assert provider.model_for(VOCALS) == "fal-ai/minimax-music/v2"
    assert provider.model_for(INSTRUMENTAL) == "fal-ai/stable-audio"
    with pytest.raises(ValueError, match="unknown fal model"):
        FalProvider(key=KEY, instrumental_model="fal-ai/unknown")


async def test_unservable_request_is_never_submitted(provider: FalProvider, fake: FalFake) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL.model_copy(update={"duration_s": 120}), track_id="t")
    assert caught.value.code is ErrorCode.UNSUPPORTED
    assert fake.submit_attempts == 0


@pytest.mark.parametrize("kind", [Audio.BROKEN, Audio.SHORT, Audio.SILENT])
async def test_bad_audio_is_downloaded_as_served(
    provider: FalProvider, fake: FalFake, tmp_path: Path, kind: Audio
) -> None:
    # The provider only fetches; judging the audio is the checking step's job.
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
        assert sf.info(dest).duration == pytest.approx(5.0)
        assert not np.any(data)


async def test_download_errors_are_classified(
    provider: FalProvider, fake: FalFake, tmp_path: Path
) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    await poll_to_end(provider, sub)
    fake.script(download=[Fail(503, retry_after=4)])
    with pytest.raises(ProviderError) as caught:
        await provider.download(sub, tmp_path / "x.wav", lambda _: None)
    assert caught.value.code is ErrorCode.SERVER
    assert caught.value.retry_after_s == 4
    assert files_in(tmp_path) == []  # no partial file left behind
