"""Provider webhooks end to end: the fakes deliver signed results to a live API, which
resolves the ledger row and signals the workflow waiting on its timer."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from domain.tracks.submissions import SubmissionLedger
from tests.conftest import Stack, eventually
from tests.fakes import Drop, Fail, Job
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import fal, hosted_settings, replicate
from tests.fakes.replicate_server import ReplicateFake
from tests.fakes.webhooks import Forgery, api_socket, live_api, webhook_settings
from tests.workflows.histories import export_and_replay

__all__ = ["api_socket", "fal", "live_api", "replicate"]


@pytest.fixture
def poll_interval_s() -> float:
    # Long enough that a track finishing fast can only have been told by the webhook.
    return 30.0


@pytest.fixture
def webhook_poll_interval_s() -> float:
    return 30.0


@pytest.fixture
def stack_overrides(
    fal: FalFake,
    replicate: ReplicateFake,
    api_socket: socket.socket,
    poll_interval_s: float,
    webhook_poll_interval_s: float,
) -> dict[str, Any]:
    return hosted_settings(
        fal,
        replicate,
        poll_interval_s=poll_interval_s,
        provider_webhook_poll_interval_s=webhook_poll_interval_s,
        submit_resolve_window_s=10,
        # Our fal account, as the fake signs its deliveries (real fal: the account's id).
        fal_webhook_user_id=fal.signer.user_id,
        **webhook_settings(fal, replicate, api_socket),
    )


@pytest.mark.parametrize("provider", ["fal", "replicate"])
async def test_a_signed_webhook_completes_the_track_without_waiting_for_a_poll(
    stack: Stack,
    live_api: str,
    fal: FalFake,
    replicate: ReplicateFake,
    provider: str,
    tmp_path: Path,
) -> None:
    fake: FalFake | ReplicateFake = fal if provider == "fal" else replicate
    if provider == "replicate":
        fal.script(submit=[Fail(403)])
    # Polls alone would never see it finish; only the delivery can end the wait.
    fake.script(jobs=[Job(running_polls=1000, running_s=2.0)])
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=20)
    assert job["status"] == "COMPLETE", job
    # The fake logs a delivery once our answer is back; on a loaded machine that can come
    # after the track is done.
    await eventually(lambda: fake.webhooks_sent >= 1, timeout_s=15, what="the delivery")
    assert fake.webhooks.log[0].status == 200
    # Only reading the result to download it: no look at submit (the delivery is
    # awaited) and the verified delivery is not asked about again.
    assert fake.polls == 1, fake.polls
    await export_and_replay(stack, created["workflow_id"], f"webhook_{provider}", tmp_path)


@pytest.mark.parametrize(("poll_interval_s", "webhook_poll_interval_s"), [(0.2, 2.0)])
async def test_a_lost_delivery_is_covered_by_the_safety_poll(
    stack: Stack, live_api: str, fal: FalFake, poll_interval_s: float, tmp_path: Path
) -> None:
    fal.webhooks.enabled = False  # the submission names a webhook; nothing is delivered
    fal.script(jobs=[Job(running_s=1.0)])
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=20)
    assert job["status"] == "COMPLETE", job
    assert fal.webhooks_sent == 0
    # The safety poll at 2 s, and reading the result to download it: a track expecting
    # a webhook does not look at once nor poll every 0.2 s (that would be ten more).
    assert fal.polls == 2, fal.polls
    await export_and_replay(stack, created["workflow_id"], "webhook_lost", tmp_path)


@pytest.mark.parametrize("poll_interval_s", [30.0])
async def test_a_forged_webhook_is_refused_and_changes_nothing(
    stack: Stack, live_api: str, fal: FalFake, poll_interval_s: float
) -> None:
    fal.webhooks.forgery = Forgery.WRONG_KEY
    # The job finishes (and the forged delivery goes out) at 2 s, between the track's
    # polls at 1 s and 3 s: only the delivery could move the track meanwhile.
    fal.script(jobs=[Job(running_polls=1000, running_s=2.0)])
    _, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    # Wait for the forged deliveries (the fake retries a non-2xx a few times).
    await stack.wait_for_job(
        created["job_id"], auth, until=lambda _: len(fal.webhooks.log) >= 1, timeout_s=20
    )
    assert {sent.status for sent in fal.webhooks.log} == {401}
    job = (await stack.http.get(f"/api/jobs/{created['job_id']}", headers=auth)).json()
    assert job["status"] == "RENDERING", "a forged delivery moved the track"
    (row,) = await SubmissionLedger(stack.store.sessions).for_job(uuid.UUID(created["job_id"]))
    assert row.resolved_via == "answer"
    await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)


@pytest.mark.parametrize("poll_interval_s", [1.0])
async def test_a_lost_fal_answer_is_resolved_by_its_webhook(
    stack: Stack, live_api: str, fal: FalFake, replicate: ReplicateFake, poll_interval_s: float
) -> None:
    """fal has no listing: the signed delivery carrying our token is how the track learns
    the id of the job it paid for, so it completes there without paying again."""
    fal.script(submit=[Drop()], jobs=[Job(running_s=1.0)])
    user_id, auth = await stack.user(credits=50)
    created = await stack.create_track(auth, duration_s=10)
    job = await stack.wait_for_job(created["job_id"], auth, timeout_s=30)
    assert job["status"] == "COMPLETE", job
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["provider"] == "fal"
    assert fal.submissions == 1 and fal.submit_attempts == 1 and replicate.submit_attempts == 0
    (row,) = await SubmissionLedger(stack.store.sessions).for_job(uuid.UUID(created["job_id"]))
    assert row.resolved_via == "webhook" and row.run_id == next(iter(fal.jobs))
    assert await stack.credits(user_id) == 50 - created["credits_required"]
    # The token addresses the row's webhook: nothing the user reads carries it.
    logs = (await stack.http.get(f"/api/jobs/{created['job_id']}/logs", headers=auth)).text
    assert row.token not in logs and row.token not in str(job)
