"""The contract every hosted provider keeps, run against fal and Replicate alike: each
provider's real client library against a local fake that speaks its HTTP protocol.

What differs between the two (endpoints, payloads, how a cancelled job reads) is stated
once per provider in `HOSTED`; behaviours only one provider has live in its own file.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from activities.providers.base import JobState, ProviderError
from activities.providers.fal import FalProvider
from activities.providers.replicate import ReplicateProvider
from core.contracts import ErrorCode, Submission
from tests.activities.providers.support import (
    FAKE_DOWNLOADS,
    INSTRUMENTAL,
    REQUESTS,
    VOCALS,
    Provider,
    files_in,
    poll_to_end,
    submit,
)
from tests.fakes import Audio, Fail, FakeServer, Job, Stall
from tests.fakes.fal_server import FalFake
from tests.fakes.replicate_server import ReplicateFake

pytestmark = pytest.mark.unit

FAL_KEY = "fal-key-id:fal-key-secret-7f3a9c"
REPLICATE_TOKEN = "r8_Secret0123456789abcdef"
# Never contacted: for tests that only build a provider.
NOWHERE = "http://127.0.0.1:9"


def _fal_urls(base: str, app: str, run_id: str) -> dict[str, str]:
    owner, alias = app.split("/")[:2]
    request = f"{base}/{owner}/{alias}/requests/{run_id}"
    return {
        "status_url": f"{request}/status",
        "response_url": request,
        "cancel_url": f"{request}/cancel",
    }


def _replicate_urls(base: str, app: str, run_id: str) -> dict[str, str]:
    return {
        "get": f"{base}/v1/predictions/{run_id}",
        "cancel": f"{base}/v1/predictions/{run_id}/cancel",
        "web": f"{base}/p/{run_id}",
    }


@dataclass(frozen=True)
class Hosted:
    """One hosted provider under contract, and what its answers look like."""

    name: str
    display_name: str
    key: str
    fake_class: type[FakeServer]
    build: Callable[..., Provider]  # (url, key=the good key, **constructor overrides)
    models: dict[str, str]  # "instrumental" / "vocals" -> the default model
    instrumental_limit_s: int
    instrumental_input: dict[str, Any]  # what INSTRUMENTAL sends
    urls: Callable[[str, str, str], dict[str, str]]  # (fake url, app, run id) -> submit URLs
    scheme: str  # the Authorization scheme a server could echo back
    probe_stage: str  # the fake's stage the health probe hits
    cancelled_state: JobState  # how a cancelled job polls
    failed_error: Callable[[str], str]  # a failed job's poll error, from the job's message


def _fal(url: str, key: str | None = FAL_KEY, **kw: Any) -> FalProvider:
    return FalProvider(key=key, queue_url=url, **{"downloads": FAKE_DOWNLOADS, **kw})


def _replicate(url: str, key: str | None = REPLICATE_TOKEN, **kw: Any) -> ReplicateProvider:
    return ReplicateProvider(api_token=key, base_url=url, **{"downloads": FAKE_DOWNLOADS, **kw})


HOSTED = {
    "fal": Hosted(
        name="fal",
        display_name="fal",
        key=FAL_KEY,
        fake_class=FalFake,
        build=_fal,
        models={"instrumental": "fal-ai/stable-audio", "vocals": "fal-ai/minimax-music/v2"},
        instrumental_limit_s=47,
        # Stable Audio takes no seed.
        instrumental_input={"prompt": "warm lo-fi piano", "seconds_total": 5},
        urls=_fal_urls,
        scheme="Key",
        probe_stage="poll",  # the status of a request id no job has
        # fal reports a cancelled request as COMPLETED with an error.
        cancelled_state=JobState.FAILED,
        failed_error=lambda message: f"runner_server_error: {message}",
    ),
    "replicate": Hosted(
        name="replicate",
        display_name="Replicate",
        key=REPLICATE_TOKEN,
        fake_class=ReplicateFake,
        build=_replicate,
        models={"instrumental": "meta/musicgen", "vocals": "minimax/music-1.5"},
        instrumental_limit_s=30,
        instrumental_input={
            "prompt": "warm lo-fi piano",
            "output_format": "wav",
            "duration": 5,
            "seed": 42,
        },
        urls=_replicate_urls,
        scheme="Bearer",
        probe_stage="account",
        cancelled_state=JobState.CANCELLED,
        failed_error=lambda message: message,
    ),
}


@pytest.fixture(params=sorted(HOSTED))
def hosted(request: pytest.FixtureRequest) -> Hosted:
    return HOSTED[request.param]


@pytest.fixture
def fake(hosted: Hosted) -> Iterator[FakeServer]:
    with hosted.fake_class(key=hosted.key) as server:
        yield server


@pytest.fixture
async def provider(hosted: Hosted, fake: FakeServer) -> AsyncIterator[Provider]:
    p = hosted.build(fake.url, request_timeout_s=5)
    yield p
    await p.aclose()


# -- the happy path ----------------------------------------------------------------------


async def test_instrumental_submit_poll_download(
    hosted: Hosted, provider: Provider, fake: FakeServer, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(queued_polls=1, running_polls=2)])
    sub = await submit(provider, INSTRUMENTAL)

    assert sub.urls == hosted.urls(fake.url, hosted.models["instrumental"], sub.run_id)
    assert fake.apps == [hosted.models["instrumental"]]
    assert fake.inputs == [hosted.instrumental_input]

    result, seen = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED and result.progress == 1.0
    assert [r.state for r in seen] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]

    beats: list[float] = []
    dest = tmp_path / "track.wav"
    audio = await provider.download(sub, dest, beats.append)
    assert (audio.extension, audio.content_type) == ("wav", "audio/wav")
    assert sf.info(dest).duration == pytest.approx(5.0, abs=0.01)
    assert beats and beats[-1] == 1.0
    assert files_in(tmp_path) == ["track.wav"]
    assert fake.submissions == 1
    assert fake.downloads == 1


async def test_vocals_use_the_vocal_model_with_lyrics(
    hosted: Hosted, provider: Provider, fake: FakeServer, tmp_path: Path
) -> None:
    fake.script(jobs=[Job(duration_s=3)])
    sub = await submit(provider, VOCALS)
    assert fake.apps == [hosted.models["vocals"]]
    assert fake.inputs == [{"prompt": "indie pop, bright", "lyrics": "[Verse]\nla la la"}]

    result, _ = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED
    await provider.download(sub, tmp_path / "song.wav", lambda _: None)
    assert sf.info(tmp_path / "song.wav").duration == pytest.approx(3.0, abs=0.01)


async def test_slow_job_stays_running(provider: Provider, fake: FakeServer) -> None:
    fake.script(jobs=[Job(running_polls=0, running_s=0.6)])
    sub = await submit(provider, INSTRUMENTAL)
    assert (await provider.poll(sub)).state is JobState.RUNNING
    await asyncio.sleep(0.7)
    assert (await provider.poll(sub)).state is JobState.SUCCEEDED


async def test_failed_job_polls_failed(
    hosted: Hosted, provider: Provider, fake: FakeServer
) -> None:
    fake.script(jobs=[Job(running_polls=1, fail="CUDA out of memory")])
    sub = await submit(provider, INSTRUMENTAL)
    result, seen = await poll_to_end(provider, sub)
    assert [r.state for r in seen] == [JobState.RUNNING, JobState.FAILED]
    assert result.error == hosted.failed_error("CUDA out of memory")


@pytest.mark.parametrize("kind", [Audio.BROKEN, Audio.SHORT, Audio.SILENT])
async def test_bad_audio_is_downloaded_as_served(
    provider: Provider, fake: FakeServer, tmp_path: Path, kind: Audio
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


# -- submit: one request, classified errors ----------------------------------------------


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
    provider: Provider, fake: FakeServer, status: int, code: ErrorCode, retryable: bool
) -> None:
    fake.script(submit=[Fail(status)])
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL, track_id="t")
    assert caught.value.code is code
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    # One request, no job: nothing retried behind our back.
    assert fake.submit_attempts == 1
    assert fake.submissions == 0


async def test_rate_limited_submit_is_raised_at_once_with_retry_after(
    provider: Provider, fake: FakeServer
) -> None:
    fake.script(submit=[Fail(429, times=10, retry_after=7)])
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL, track_id="t")

    assert caught.value.code is ErrorCode.RATE_LIMITED
    assert caught.value.retryable
    # Replicate's ReplicateError alone would have dropped it.
    assert caught.value.retry_after_s == 7
    # fal-client alone would retry 429 ten times with backoff; ours gives up at once.
    assert fake.submit_attempts == 1


async def test_rate_limit_then_ok_when_the_caller_retries(
    provider: Provider, fake: FakeServer
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


async def test_unconfigured_provider_refuses_to_submit(hosted: Hosted, fake: FakeServer) -> None:
    provider = hosted.build(fake.url, key=None)
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL, track_id="t")
    assert caught.value.code is ErrorCode.UNCONFIGURED
    assert fake.submit_attempts == 0


async def test_unservable_request_is_never_submitted(provider: Provider, fake: FakeServer) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.submit(INSTRUMENTAL.model_copy(update={"duration_s": 120}), track_id="t")
    assert caught.value.code is ErrorCode.UNSUPPORTED
    assert fake.submit_attempts == 0


async def test_unreachable_host_is_a_timeout(hosted: Hosted) -> None:
    with hosted.fake_class(key=hosted.key) as gone:
        url = gone.url
    provider = hosted.build(url)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.submit(INSTRUMENTAL, track_id="t")
    finally:
        await provider.aclose()
    assert caught.value.code is ErrorCode.TIMEOUT
    assert caught.value.retryable


# -- poll --------------------------------------------------------------------------------


async def test_poll_errors_are_retryable_and_bounded(provider: Provider, fake: FakeServer) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    fake.script(poll=[Fail(500, times=2), Fail(503, retry_after=1), Fail(429, retry_after="2")])

    expected = [ErrorCode.SERVER, ErrorCode.SERVER, ErrorCode.SERVER, ErrorCode.RATE_LIMITED]
    for code in expected:
        with pytest.raises(ProviderError) as caught:
            await provider.poll(sub)
        assert caught.value.code is code
        assert caught.value.retryable
    assert caught.value.retry_after_s == 2
    assert fake.polls == 4  # neither the 503 nor the 429 was retried inside the library

    result, _ = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED


async def test_rate_limited_poll_is_raised_at_once(provider: Provider, fake: FakeServer) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    fake.script(poll=[Fail(429, times=10, retry_after=5)])
    with pytest.raises(ProviderError) as caught:
        await provider.poll(sub)

    assert caught.value.code is ErrorCode.RATE_LIMITED
    assert caught.value.retry_after_s == 5
    # replicate's RetryTransport would sleep Retry-After between ten GET attempts (45 s here).
    assert fake.polls == 1


async def test_stalled_request_times_out_retryably(hosted: Hosted, fake: FakeServer) -> None:
    provider = hosted.build(fake.url, request_timeout_s=0.5)
    try:
        sub = await submit(provider, INSTRUMENTAL)
        fake.script(poll=[Stall(3)])
        with pytest.raises(ProviderError) as caught:
            await provider.poll(sub)
    finally:
        await provider.aclose()
    assert caught.value.code is ErrorCode.TIMEOUT
    assert caught.value.retryable


# -- download ----------------------------------------------------------------------------


async def test_download_errors_are_classified(
    provider: Provider, fake: FakeServer, tmp_path: Path
) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    await poll_to_end(provider, sub)
    fake.script(download=[Fail(503, retry_after=4)])
    with pytest.raises(ProviderError) as caught:
        await provider.download(sub, tmp_path / "x.wav", lambda _: None)
    assert caught.value.code is ErrorCode.SERVER
    assert caught.value.retry_after_s == 4
    assert files_in(tmp_path) == []  # no partial file left behind


# -- cancel ------------------------------------------------------------------------------


async def test_cancel_hits_the_cancel_endpoint(
    hosted: Hosted, provider: Provider, fake: FakeServer
) -> None:
    fake.script(jobs=[Job(running_polls=100)])
    sub = await submit(provider, INSTRUMENTAL)
    assert (await provider.poll(sub)).state is JobState.RUNNING

    await provider.cancel(sub)
    assert fake.cancels == 1
    assert fake.cancelled_ids == [sub.run_id]
    assert fake.jobs[sub.run_id].cancelled
    assert (await provider.poll(sub)).state is hosted.cancelled_state


async def test_cancel_after_completion_is_a_no_op(provider: Provider, fake: FakeServer) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    await poll_to_end(provider, sub)
    await provider.cancel(sub)  # fal answers 400 ALREADY_COMPLETED, Replicate the prediction
    assert fake.cancels == 1
    assert not fake.jobs[sub.run_id].cancelled


async def test_cancel_server_errors_are_raised(provider: Provider, fake: FakeServer) -> None:
    sub = await submit(provider, INSTRUMENTAL)
    fake.script(cancel=[Fail(500), Fail(502)])
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            await provider.cancel(sub)
        assert caught.value.code is ErrorCode.SERVER
    assert fake.cancels == 2


# -- resuming and event loops ------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(REQUESTS))
async def test_a_new_worker_resumes_from_the_submission_alone(
    hosted: Hosted, fake: FakeServer, tmp_path: Path, kind: str
) -> None:
    request = REQUESTS[kind]
    first = hosted.build(fake.url)
    fake.script(jobs=[Job(running_polls=1)])
    run_id, _ = await first.submit(request, track_id="t")
    await first.aclose()
    del first

    # What survives in workflow history: the id and model, not the provider object.
    stored = Submission(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        provider=hosted.name,
        model=hosted.models[kind],
        run_id=run_id,
        request=request,
    )
    second = hosted.build(fake.url)
    try:
        result, _ = await poll_to_end(second, stored)
        assert result.state is JobState.SUCCEEDED
        audio = await second.download(stored, tmp_path / "resumed.wav", lambda _: None)
    finally:
        await second.aclose()
    assert audio.extension == "wav"
    assert sf.info(tmp_path / "resumed.wav").frames > 0
    assert fake.submissions == 1


def test_fresh_event_loops_get_their_own_client(
    hosted: Hosted, fake: FakeServer, tmp_path: Path
) -> None:
    provider = hosted.build(fake.url)

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


# -- health, secrets, the model table ----------------------------------------------------


async def test_health(hosted: Hosted, fake: FakeServer) -> None:
    wrong = f"{hosted.name}-wrong-key-0000"
    good = hosted.build(fake.url)
    bad = hosted.build(fake.url, key=wrong)
    none = hosted.build(fake.url, key=None)
    try:
        assert (await good.health()).status == "ok"
        health = await bad.health()
        assert health.status == "fail"
        assert health.error is not None and "401" in health.error
        assert wrong not in health.error
        assert (await none.health()).status == "unconfigured"
        fake.script((), **{hosted.probe_stage: [Fail(503)]})  # no job fates, one failure
        health = await good.health()
        assert health.status == "fail"
        assert health.error is not None and "503" in health.error
    finally:
        await good.aclose()
        await bad.aclose()
    assert not none.configured


async def test_secrets_never_appear_in_errors(hosted: Hosted, fake: FakeServer) -> None:
    secret = f"{hosted.name}-wrong-secret-5d1e"
    bad = hosted.build(fake.url, key=secret)
    try:
        with pytest.raises(ProviderError) as caught:
            await bad.submit(INSTRUMENTAL, track_id="t")
    finally:
        await bad.aclose()
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    assert fake.auth_failures == 1
    assert secret not in str(caught.value) and secret not in repr(caught.value.args)

    # Even a server that echoes the key back gets redacted.
    good = hosted.build(fake.url)
    fake.script(submit=[Fail(500, detail=f"bad header {hosted.scheme} {hosted.key}")])
    try:
        with pytest.raises(ProviderError) as caught:
            await good.submit(INSTRUMENTAL, track_id="t")
    finally:
        await good.aclose()
    assert hosted.key not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_cannot_serve_from_the_model_table(hosted: Hosted) -> None:
    provider = hosted.build(NOWHERE)
    assert provider.cannot_serve(INSTRUMENTAL) is None
    assert provider.cannot_serve(VOCALS) is None
    limit = hosted.instrumental_limit_s
    for asked in (limit + 1, 120):
        too_long = provider.cannot_serve(INSTRUMENTAL.model_copy(update={"duration_s": asked}))
        assert too_long is not None and f"at most {limit} s" in too_long
    for lyrics in (None, "  "):
        no_lyrics = provider.cannot_serve(VOCALS.model_copy(update={"lyrics": lyrics}))
        assert no_lyrics is not None and "lyrics" in no_lyrics
    assert provider.model_for(VOCALS) == hosted.models["vocals"]
    assert provider.model_for(INSTRUMENTAL) == hosted.models["instrumental"]
    for role in ("vocals_model", "instrumental_model"):
        with pytest.raises(ValueError, match=f"unknown {hosted.display_name} model"):
            hosted.build(NOWHERE, **{role: "someone/unknown"})
