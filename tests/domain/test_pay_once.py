"""The pay-once policy (domain/providers/pay_once.py) on the real databases, without
Temporal or a worker: a provider at the port that records every request it takes, and
faults placed where they cost money (the request taken, its answer lost)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import pytest

from core.contracts import (
    ErrorCode,
    GenerationRequest,
    JobStatus,
    Submission,
    SubmissionState,
    TrackInput,
)
from domain.providers.pay_once import ProviderJobs
from domain.providers.port import PaidProvider, ProviderError
from domain.tracks.start import track_input
from domain.tracks.submissions import SubmissionLedger
from domain.users import create_user
from tests.domain.conftest import DomainContext, domain_settings

REQUEST = GenerationRequest(prompt="brass at dawn", duration_s=10, seed=1)


@dataclass
class Provider:
    """A provider at the port: every request it takes is a paid job."""

    name: str = "replicate"
    # What the next submits do: "answer", "lose" (job made, answer lost) or "refuse".
    script: list[str] = field(default_factory=list)
    listing: bool = True
    jobs: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    webhook_urls: list[str | None] = field(default_factory=list)

    @property
    def remote(self) -> bool:
        return True

    def model_for(self, request: GenerationRequest) -> str | None:
        return "owner/model"

    async def submit(
        self,
        request: GenerationRequest,
        *,
        track_id: str,
        token: str | None = None,
        webhook_url: str | None = None,
    ) -> tuple[str, dict[str, str]]:
        step = self.script.pop(0) if self.script else "answer"
        if step == "refuse":
            # Quoting the request back, as some APIs do.
            raise ProviderError(ErrorCode.INVALID, f"bad webhook {webhook_url}", status=422)
        run_id = f"run-{len(self.jobs) + 1}"
        self.jobs.append(run_id)
        self.webhook_urls.append(webhook_url)
        if step == "lose":
            raise ProviderError(ErrorCode.TIMEOUT, "read timed out", sent=True)
        return run_id, {}

    async def find_submission(
        self, request: GenerationRequest, *, since: datetime, exclude: set[str]
    ) -> str | None:
        if not self.listing:
            return None
        return next((run for run in self.jobs if run not in exclude), None)

    async def cancel(self, submission: Submission) -> None:
        self.cancelled.append(submission.run_id)


@dataclass
class Providers:
    provider: Provider

    def get(self, name: str) -> PaidProvider:
        return self.provider


def noop() -> None:
    pass


async def new_track(ctx: DomainContext, *, rendering: bool = True) -> TrackInput:
    user, _ = await create_user(ctx.sessions, "listener", 10, settings=ctx.settings)
    track, job = await ctx.jobs.create_track(user.id, REQUEST, 1)
    if rendering:
        await ctx.jobs.mark_rendering(job.id, "run-a")
    return track_input(track, job)


def policy(ctx: DomainContext, provider: Provider, **settings: object) -> ProviderJobs:
    configured = ctx.settings.model_copy(update=settings) if settings else ctx.settings
    return ProviderJobs(SubmissionLedger(ctx.sessions), ctx.jobs, Providers(provider), configured)


async def submit(jobs: ProviderJobs, track: TrackInput, provider: Provider) -> Submission:
    return await jobs.submit(
        track,
        provider,
        number=1,
        max_paid=4,
        resolve_window_s=0.2,
        heartbeat=noop,
        workflow_run_id="run-a",
    )


async def user_readable(ctx: DomainContext, job_id: uuid.UUID) -> str:
    """Everything the job log shows a user (messages and data)."""
    return " ".join(f"{e.message} {e.data}" for e in await ctx.jobs.events(job_id))


async def test_every_retry_of_a_submit_returns_the_one_paid_job(ctx: DomainContext) -> None:
    provider = Provider()
    jobs = policy(ctx, provider)
    track = await new_track(ctx)
    first = await submit(jobs, track, provider)
    again = await submit(jobs, track, provider)
    assert first.run_id == again.run_id == "run-1"
    assert provider.jobs == ["run-1"]


async def test_a_lost_answer_is_found_in_the_listing_not_sent_again(ctx: DomainContext) -> None:
    provider = Provider(script=["lose"])
    jobs = policy(ctx, provider)
    track = await new_track(ctx)
    found = await submit(jobs, track, provider)
    assert (found.run_id, provider.jobs) == ("run-1", ["run-1"])
    (row,) = await jobs.ledger.for_job(track.job_id)
    assert (row.state, row.resolved_via) == (SubmissionState.RESOLVED, "listing")
    assert row.token not in await user_readable(ctx, track.job_id)


async def test_a_lost_answer_nobody_can_find_is_ambiguous_and_never_resent(
    ctx: DomainContext,
) -> None:
    provider = Provider(script=["lose"], listing=False)
    jobs = policy(ctx, provider)
    track = await new_track(ctx)
    with pytest.raises(ProviderError) as first:
        await submit(jobs, track, provider)
    with pytest.raises(ProviderError) as again:
        await submit(jobs, track, provider)
    assert first.value.code == again.value.code == ErrorCode.AMBIGUOUS
    assert provider.jobs == ["run-1"], "an ambiguous submit was paid for twice"
    (row,) = await jobs.ledger.for_job(track.job_id)
    assert row.state is SubmissionState.AMBIGUOUS
    # The token addresses the row's webhook: it is in no message a user reads.
    assert row.token not in first.value.message + again.value.message
    assert row.token not in await user_readable(ctx, track.job_id)


async def test_a_refused_submit_may_be_sent_again_with_a_new_token(ctx: DomainContext) -> None:
    provider = Provider(script=["refuse"])
    jobs = policy(ctx, provider, provider_webhooks_enabled=True)
    track = await new_track(ctx)
    with pytest.raises(ProviderError) as error:
        await submit(jobs, track, provider)
    (refused,) = await jobs.ledger.for_job(track.job_id)
    assert refused.state is SubmissionState.REJECTED
    assert refused.token not in str(error.value) + error.value.message + (refused.error or "")
    sent = await submit(jobs, track, provider)
    assert provider.jobs == [sent.run_id]
    assert sent.token != refused.token


async def test_nothing_is_sent_for_a_job_that_has_ended(ctx: DomainContext) -> None:
    """A cancel that committed before the submit: no row, no request, no payment."""
    provider = Provider()
    jobs = policy(ctx, provider)
    track = await new_track(ctx)
    await ctx.jobs.finish_unsuccessfully(track.job_id, JobStatus.CANCELLED, None, "cancelled")
    with pytest.raises(ProviderError) as refused:
        await submit(jobs, track, provider)
    assert refused.value.code == ErrorCode.JOB_MOVED
    assert provider.jobs == [] and await jobs.ledger.for_job(track.job_id) == []


async def test_a_cancel_stops_the_paid_job_and_a_later_attempt_does_not_revive_it(
    ctx: DomainContext,
) -> None:
    provider = Provider()
    jobs = policy(ctx, provider)
    track = await new_track(ctx)
    sent = await submit(jobs, track, provider)
    stopped = await jobs.cancel_open(
        track.job_id, REQUEST, reason="cancelled by request", window_s=0.2, heartbeat=noop
    )
    assert stopped == provider.cancelled == [sent.run_id]
    with pytest.raises(ProviderError) as late:
        await submit(jobs, track, provider)
    assert late.value.code == ErrorCode.JOB_CANCELLED
    assert provider.jobs == [sent.run_id]
    (row,) = await jobs.ledger.for_job(track.job_id)
    assert row.token not in await user_readable(ctx, track.job_id)


async def test_the_webhook_url_sent_is_the_one_the_route_serves(ctx: DomainContext) -> None:
    provider = Provider()
    jobs = policy(ctx, provider, provider_webhooks_enabled=True)
    track = await new_track(ctx)
    sent = await submit(jobs, track, provider)
    base = domain_settings("sqlite://", ctx.settings.storage_local_dir).public_base_url
    assert provider.webhook_urls == [
        f"{base.rstrip('/')}/api/provider-webhooks/replicate?token={sent.token}"
    ]
    assert sent.webhook
