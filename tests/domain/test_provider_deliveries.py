"""The provider-webhook use case (domain/webhooks/deliveries.py) on the real databases,
against the fal and Replicate fakes (their real signing, keys and status APIs), without
the API or Temporal: the workflow is told through the port, recorded here.

The attacker of these tests holds a fal account of their own: fal signs their
deliveries with the same keys as ours, and they can read a submission's webhook URL only
if we ever show it. They deliver a genuine result of *their* job to *our* pending
submission, or replay one of ours to another submission."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr

from core.contracts import GenerationRequest, ProviderEvent, SubmissionState
from core.models import ProviderSubmission
from domain.tracks.submissions import SubmissionLedger
from domain.users import create_user
from domain.webhooks.deliveries import (
    ProviderDeliveries,
    Replayed,
    RetryLater,
    UnknownSubmission,
)
from domain.webhooks.incoming import NotOurAccount
from tests.domain.conftest import DomainContext
from tests.fakes.fal_server import FalFake
from tests.fakes.fixtures import FAL_KEY, REPLICATE_TOKEN, fal, replicate
from tests.fakes.replicate_server import ReplicateFake
from tests.fakes.webhooks import WebhookSender, fal_completion, replicate_prediction

__all__ = ["fal", "replicate"]

MODELS = {"fal": "fal-ai/stable-audio", "replicate": "meta/musicgen"}
REQUEST = GenerationRequest(prompt="a bell in fog", duration_s=10)


@dataclass
class Workflow:
    """The port's other side: what the track's workflow was told."""

    told: list[ProviderEvent] = field(default_factory=list)
    unreachable: bool = False

    async def __call__(self, track_id: uuid.UUID, event: ProviderEvent) -> bool:
        if self.unreachable:
            raise RetryLater("Temporal is down")
        self.told.append(event)
        return True


@dataclass
class World:
    ctx: DomainContext
    fal: FalFake
    replicate: ReplicateFake
    deliveries: ProviderDeliveries
    workflow: Workflow

    def fake(self, provider: str) -> FalFake | ReplicateFake:
        return self.fal if provider == "fal" else self.replicate

    def paid_job(self, provider: str) -> str:
        """A job at the provider, on our account (as if our submit had reached it)."""
        return self.fake(provider).new_job(MODELS[provider], {"prompt": REQUEST.prompt}).id

    async def pending(self, provider: str) -> ProviderSubmission:
        """A submission whose request left and whose answer is not recorded."""
        user, _ = await create_user(self.ctx.sessions, "listener", 10, settings=self.ctx.settings)
        track, job = await self.ctx.jobs.create_track(user.id, REQUEST, 1)
        begun = await SubmissionLedger(self.ctx.sessions).begin(
            job_id=job.id, track_id=track.id, provider=provider, model=MODELS[provider], number=1
        )
        return begun.row

    async def deliver(
        self,
        row: ProviderSubmission,
        run_id: str,
        *,
        sender: WebhookSender | None = None,
        signed: tuple[bytes, dict[str, str]] | None = None,
    ) -> Any:
        provider = row.provider
        if signed is None:
            signed = self.signed(provider, run_id, sender)
        body, headers = signed
        return await self.deliveries.receive(provider, row.token, headers, body, self.workflow)

    def signed(
        self, provider: str, run_id: str, sender: WebhookSender | None = None
    ) -> tuple[bytes, dict[str, str]]:
        sender = sender or self.fake(provider).webhooks
        body = fal_completion(run_id) if provider == "fal" else replicate_prediction(run_id)
        return sender.signed(body, run_id=run_id)

    async def row(self, row: ProviderSubmission) -> ProviderSubmission:
        fresh = await SubmissionLedger(self.ctx.sessions).get(row.id)
        assert fresh is not None
        return fresh


def world_for(ctx: DomainContext, fal: FalFake, replicate: ReplicateFake, **extra: Any) -> World:
    settings = ctx.settings.model_copy(
        update={
            "fal_key": SecretStr(FAL_KEY),
            "fal_queue_url": fal.url,
            "fal_webhook_jwks_url": fal.jwks_url,
            "replicate_api_token": SecretStr(REPLICATE_TOKEN),
            "replicate_base_url": replicate.url,
            "replicate_webhook_secret": SecretStr(replicate.signer.secret),
            **extra,
        }
    )
    deliveries = ProviderDeliveries.from_settings(ctx.sessions, ctx.jobs, settings)
    return World(ctx, fal, replicate, deliveries, Workflow())


@pytest.fixture
def world(ctx: DomainContext, fal: FalFake, replicate: ReplicateFake) -> World:
    return world_for(ctx, fal, replicate)


PROVIDERS = ["fal", "replicate"]
TIMESTAMP = {"fal": "X-Fal-Webhook-Timestamp", "replicate": "webhook-timestamp"}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_lost_submit_answer_is_resolved_by_its_webhook_to_the_one_paid_job(
    world: World, provider: str
) -> None:
    """The fault: the provider made the job, our record of its answer never happened.
    The delivery about that job resolves the row; nothing is paid again."""
    row = await world.pending(provider)
    run_id = world.paid_job(provider)
    outcome = await world.deliver(row, run_id)
    assert (outcome.outcome, outcome.workflow_notified) == ("recorded", True)
    fresh = await world.row(row)
    assert (fresh.state, fresh.run_id, fresh.resolved_via) == (
        SubmissionState.RESOLVED,
        run_id,
        "webhook",
    )
    assert [e.run_id for e in world.workflow.told] == [run_id]
    assert len(world.fake(provider).jobs) == 1
    log = " ".join(f"{e.message} {e.data}" for e in await world.ctx.jobs.events(row.job_id))
    assert "submission_resolved" in [e.event for e in await world.ctx.jobs.events(row.job_id)]
    assert row.token not in log


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_run_the_provider_does_not_confirm_to_our_key_is_refused(
    world: World, provider: str
) -> None:
    """A genuine delivery about a job of another account (their own fal job, signed by
    fal's shared keys) would orphan our paid job: it is checked with our key first."""
    row = await world.pending(provider)
    with pytest.raises(NotOurAccount):
        await world.deliver(row, "their-own-run")
    fresh = await world.row(row)
    assert (fresh.state, fresh.run_id) == (SubmissionState.SENDING, None)
    assert world.workflow.told == []
    assert await world.ctx.jobs.events(row.job_id) == []


async def test_a_fal_delivery_naming_another_fal_user_is_refused(
    ctx: DomainContext, fal: FalFake, replicate: ReplicateFake
) -> None:
    world = world_for(ctx, fal, replicate, fal_webhook_user_id=fal.signer.user_id)
    row = await world.pending("fal")
    # Even about a run id that exists: the user id is checked before anything else.
    run_id = world.paid_job("fal")
    theirs = WebhookSender(fal.signer.for_user("user-attacker"))
    with pytest.raises(NotOurAccount):
        await world.deliver(row, run_id, sender=theirs)
    assert (await world.row(row)).run_id is None
    await world.deliver(row, run_id)
    assert (await world.row(row)).run_id == run_id


async def test_our_fal_user_is_learned_from_a_confirmed_delivery(world: World) -> None:
    """No FAL_WEBHOOK_USER_ID: the first delivery whose run fal confirms to our key pins
    the user id; deliveries naming anyone else are refused from then on."""
    first = await world.pending("fal")
    await world.deliver(first, world.paid_job("fal"))
    assert world.deliveries.verifier.fal_user_id == world.fal.signer.user_id
    row = await world.pending("fal")
    theirs = WebhookSender(world.fal.signer.for_user("user-attacker"))
    with pytest.raises(NotOurAccount, match="another fal account"):
        await world.deliver(row, world.paid_job("fal"), sender=theirs)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_replayed_delivery_is_refused_inside_the_tolerance(
    world: World, provider: str
) -> None:
    """The token is not signed: a captured delivery sent again, to the same submission or
    to another pending one, is taken once."""
    row, other = await world.pending(provider), await world.pending(provider)
    run_id = world.paid_job(provider)
    signed = world.signed(provider, run_id)
    await world.deliver(row, run_id, signed=signed)
    for target in (other, row):
        with pytest.raises(Replayed):
            await world.deliver(target, run_id, signed=signed)
    assert (await world.row(other)).run_id is None
    assert len(world.workflow.told) == 1
    # The provider's own retry, signed afresh a moment later, is taken (and changes nothing).
    body, headers = signed
    fresh = world.fake(provider).signer.sign(
        body, run_id=run_id, timestamp=int(headers[TIMESTAMP[provider]]) + 1
    )
    assert (await world.deliver(row, run_id, signed=(body, fresh))).outcome == "recorded"


async def test_a_delivery_that_could_not_be_told_is_taken_on_the_providers_retry(
    world: World,
) -> None:
    row = await world.pending("replicate")
    run_id = world.paid_job("replicate")
    signed = world.signed("replicate", run_id)
    world.workflow.unreachable = True
    with pytest.raises(RetryLater):
        await world.deliver(row, run_id, signed=signed)
    world.workflow.unreachable = False
    # The same signed delivery again (a provider retrying as it sent it): not a replay.
    assert (await world.deliver(row, run_id, signed=signed)).workflow_notified
    assert [e.run_id for e in world.workflow.told] == [run_id]


async def test_a_second_paid_job_is_logged_as_a_duplicate(world: World) -> None:
    row = await world.pending("replicate")
    ours, second = world.paid_job("replicate"), world.paid_job("replicate")
    await SubmissionLedger(world.ctx.sessions).accept(row.id, ours, {})
    outcome = await world.deliver(row, second)
    assert (outcome.outcome, outcome.workflow_notified) == ("duplicate", False)
    assert (await world.row(row)).run_id == ours
    events = await world.ctx.jobs.events(row.job_id)
    assert [e.event for e in events] == ["duplicate_job"]
    assert events[0].data == {"recorded_run_id": ours, "submission_id": str(row.id)}


async def test_a_token_nobody_issued_is_unknown(world: World) -> None:
    row = await world.pending("replicate")
    body, headers = world.signed("replicate", world.paid_job("replicate"))
    with pytest.raises(UnknownSubmission):
        await world.deliveries.receive("replicate", "made-up", headers, body, world.workflow)
    with pytest.raises(UnknownSubmission):  # a fal row's token on the Replicate URL
        await world.deliveries.receive(
            "replicate", (await world.pending("fal")).token, headers, body, world.workflow
        )
    assert (await world.row(row)).run_id is None


async def test_a_providers_error_quoting_the_webhook_url_loses_the_token(world: World) -> None:
    """The error a delivery carries becomes the job's error message, which users read."""
    row = await world.pending("fal")
    run_id = world.paid_job("fal")
    error = f"could not reach https://api.example.com/api/provider-webhooks/fal?token={row.token}"
    body = fal_completion(run_id, ok=False, error=error)
    signed = world.fal.webhooks.signed(body, run_id=run_id)
    await world.deliver(row, run_id, signed=signed)
    [told] = world.workflow.told
    assert told.state == "failed" and told.error is not None
    assert row.token not in told.error and "[token]" in told.error
