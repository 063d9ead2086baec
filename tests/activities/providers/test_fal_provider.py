"""What only FalProvider does, with the real fal-client against a local fake of fal's queue
API. The behaviours it shares with Replicate are in test_hosted_contract.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from activities.providers.base import JobState
from activities.providers.fal import FalProvider
from core.contracts import Submission
from tests.activities.providers.support import (
    FAKE_DOWNLOADS,
    INSTRUMENTAL,
    VOCALS,
    poll_to_end,
    submit,
)
from tests.fakes.fal_server import FalFake

pytestmark = pytest.mark.unit

KEY = "fal-key-id:fal-key-secret-7f3a9c"


@pytest.fixture
def fake() -> Iterator[FalFake]:
    with FalFake(key=KEY) as server:
        yield server


@pytest.fixture
async def provider(fake: FalFake) -> AsyncIterator[FalProvider]:
    p = FalProvider(key=KEY, queue_url=fake.url, request_timeout_s=5, downloads=FAKE_DOWNLOADS)
    yield p
    await p.aclose()


async def test_request_urls_drop_the_model_subpath(provider: FalProvider, fake: FalFake) -> None:
    # Submitted to fal-ai/minimax-music/v2, followed at fal-ai/minimax-music/requests/<id>.
    sub = await submit(provider, VOCALS)
    assert fake.apps == ["fal-ai/minimax-music/v2"]
    assert sub.urls["status_url"] == (
        f"{fake.url}/fal-ai/minimax-music/requests/{sub.run_id}/status"
    )
    result, _ = await poll_to_end(provider, sub)
    assert result.state is JobState.SUCCEEDED


async def test_cancel_of_an_unknown_request_is_a_no_op(
    provider: FalProvider, fake: FalFake
) -> None:
    gone = Submission(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        provider="fal",
        model="fal-ai/stable-audio",
        run_id=str(uuid.uuid4()),
        request=INSTRUMENTAL,
    )
    await provider.cancel(gone)  # fal answers 404: nothing left to stop
    assert fake.cancelled_ids == [gone.run_id]


async def test_each_provider_follows_jobs_on_its_own_queue() -> None:
    # fal-client builds every queue URL from one module global; each call repoints it.
    with FalFake(key=KEY) as one, FalFake(key=KEY) as two:
        first = FalProvider(key=KEY, queue_url=one.url, downloads=FAKE_DOWNLOADS)
        second = FalProvider(key=KEY, queue_url=two.url, downloads=FAKE_DOWNLOADS)
        try:
            sub_one = await submit(first, INSTRUMENTAL)
            sub_two = await submit(second, INSTRUMENTAL)
            for _ in range(2):
                await first.poll(sub_one)
                await second.poll(sub_two)
        finally:
            await first.aclose()
            await second.aclose()
    assert (one.submissions, one.polls) == (1, 2)
    assert (two.submissions, two.polls) == (1, 2)
