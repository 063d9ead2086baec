"""Use case: a provider's webhook delivery about one of our paid submissions.

    verify → find the row by token → accept once → confirm an unseen run → record → tell

* Verification (domain/webhooks/incoming.py) proves the provider sent it and, for fal,
  that it names our fal account.
* The token in the URL only says which ledger row the delivery is about; providers do not
  sign it. So the same signed delivery is taken once (its digest is stored for the
  tolerance window): a replay, even to another token, is refused.
* A run id the row does not already follow is confirmed with the provider by a status
  call with our own key before anything is written: a job of another account (fal signs
  for all its customers) cannot be pinned on our pending submission, which would orphan
  our paid job and pay again at the fallback.
* The track's workflow is told through `WorkflowNotifier`, a port the caller supplies
  (the API: a Temporal signal), so the rule is tested without Temporal.

Nothing here writes the submission's token anywhere a user reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Protocol
from urllib.parse import quote

import httpx
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from core.contracts import ProviderEvent
from core.db import SessionFactory, transaction
from core.logging import get_logger
from core.models import ProviderSubmission, ProviderWebhookDelivery, utcnow
from core.settings import Settings
from domain.tracks.jobs import JobStore
from domain.tracks.submissions import SubmissionLedger
from domain.webhooks.incoming import (
    FAL,
    FINAL_STATES,
    REPLICATE,
    NotOurAccount,
    ProviderWebhookVerifier,
    VerifiedDelivery,
)

log = get_logger("soundfoundry.provider_webhooks")


class UnknownSubmission(Exception):
    """No submission of this provider has the delivery's token."""


class Replayed(Exception):
    """This signed delivery was taken already."""


class RetryLater(Exception):
    """Something we need (the provider's status API, Temporal) is out of reach now; the
    provider's retry of the delivery will be taken."""


class WorkflowNotifier(Protocol):
    async def __call__(self, track_id: uuid.UUID, event: ProviderEvent) -> bool:
        """Tell the track's workflow; False if it has closed. RetryLater if unreachable."""
        ...


class RunConfirmer(Protocol):
    async def __call__(self, provider: str, run_id: str, model: str | None) -> bool:
        """Is `run_id` a job of our account at `provider`? RetryLater if it cannot tell."""
        ...


@dataclass(frozen=True)
class DeliveryOutcome:
    # "recorded": the run id is on the submission's row; "duplicate": the row already
    # followed another run id, so this one is a second paid job (recorded in the job log).
    outcome: Literal["recorded", "duplicate"]
    run_id: str
    state: str
    workflow_notified: bool


@dataclass
class ProviderDeliveries:
    sessions: SessionFactory
    jobs: JobStore
    verifier: ProviderWebhookVerifier
    confirm: RunConfirmer
    tolerance_s: int

    @classmethod
    def from_settings(
        cls, sessions: SessionFactory, jobs: JobStore, settings: Settings
    ) -> ProviderDeliveries:
        return cls(
            sessions=sessions,
            jobs=jobs,
            verifier=ProviderWebhookVerifier.from_settings(settings),
            confirm=ProviderStatus(settings),
            tolerance_s=settings.provider_webhook_tolerance_s,
        )

    async def receive(
        self,
        provider: str,
        token: str,
        headers: Mapping[str, str],
        body: bytes,
        notify: WorkflowNotifier,
    ) -> DeliveryOutcome:
        """Raises NotAuthentic (incl. NotOurAccount), MalformedDelivery, VerifierUnavailable,
        UnknownSubmission, Replayed or RetryLater; writes nothing in any of those cases
        except that a replayed delivery stays taken."""
        delivery = await self.verifier.verify(provider, token, headers, body)
        ledger = SubmissionLedger(self.sessions)
        row = await ledger.by_token(token)
        if row is None or row.provider != provider:
            raise UnknownSubmission(f"no {provider} submission has this token")
        await self._take(delivery)
        try:
            return await self._record(ledger, row, delivery, notify)
        except RetryLater:
            # Nothing was settled for good: the provider's retry must not look like a replay.
            await self._release(delivery)
            raise

    async def _record(
        self,
        ledger: SubmissionLedger,
        row: ProviderSubmission,
        delivery: VerifiedDelivery,
        notify: WorkflowNotifier,
    ) -> DeliveryOutcome:
        event, provider = delivery.event, row.provider
        if event.error:
            # The provider's error text reaches the job's error message, which users read;
            # it may quote the webhook URL the job was sent with.
            event = event.model_copy(update={"error": event.error.replace(row.token, "[token]")})
        unseen = event.run_id != row.run_id
        if unseen and not await self.confirm(provider, event.run_id, row.model):
            raise NotOurAccount(f"{provider} does not know run {event.run_id} on our account")
        if delivery.fal_user_id is not None:
            # Either the run was confirmed to our key just now or the row already followed
            # it: the user id this delivery names is ours.
            self.verifier.learn_fal_user(delivery.fal_user_id)
        known_before = row.run_id
        resolution = await ledger.accept(row.id, event.run_id, {}, via="webhook")
        if resolution.duplicate_of is not None:
            # Two paid jobs for one submission: the workflow follows the recorded one; the
            # job log says what happened so an operator can stop the other.
            message = (
                f"Duplicate {provider} job found: run {event.run_id} ({event.state}) for a "
                f"submission already following run {resolution.duplicate_of}"
            )
            await self.jobs.add_event(
                row.job_id,
                "duplicate_job",
                message,
                level="warning",
                provider=provider,
                provider_run_id=event.run_id,
                data={"recorded_run_id": resolution.duplicate_of, "submission_id": str(row.id)},
            )
            log.warning(message, provider=provider, job_id=str(row.job_id))
            return DeliveryOutcome("duplicate", event.run_id, event.state, False)
        if known_before is None:
            await self.jobs.add_event(
                row.job_id,
                "submission_resolved",
                f"Run {event.run_id} of {provider} found by its webhook (the submit's answer "
                "had not been recorded)",
                provider=provider,
                provider_run_id=event.run_id,
                data={"submission_id": str(row.id)},
            )
        notified = event.state in FINAL_STATES and await notify(row.track_id, event)
        log.info(
            "provider webhook",
            provider=provider,
            job_id=str(row.job_id),
            provider_run_id=event.run_id,
            state=event.state,
            workflow_notified=notified,
        )
        return DeliveryOutcome("recorded", event.run_id, event.state, notified)

    async def _take(self, delivery: VerifiedDelivery) -> None:
        now = utcnow()
        try:
            async with transaction(self.sessions) as session:
                # Older than twice the tolerance, a delivery is refused as stale anyway.
                await session.exec(
                    delete(ProviderWebhookDelivery).where(
                        col(ProviderWebhookDelivery.received_at)
                        < now - timedelta(seconds=2 * self.tolerance_s)
                    )
                )
                session.add(
                    ProviderWebhookDelivery(
                        digest=delivery.digest, provider=delivery.event.provider, received_at=now
                    )
                )
        except IntegrityError:
            raise Replayed("this delivery was received already") from None

    async def _release(self, delivery: VerifiedDelivery) -> None:
        async with transaction(self.sessions) as session:
            await session.exec(
                delete(ProviderWebhookDelivery).where(
                    col(ProviderWebhookDelivery.digest) == delivery.digest
                )
            )


class ProviderStatus:
    """`RunConfirmer` over the providers' status APIs, called with our own keys.

    A 200 means the run is ours; 401/403/404/422 mean it is not (or the key is wrong,
    which proves nothing is ours either); anything else cannot tell.
    """

    def __init__(
        self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self._transport = transport

    async def __call__(self, provider: str, run_id: str, model: str | None) -> bool:
        # fal addresses a request through its app: the row's model, else any we use.
        s = self.settings
        models = [model] if model else [s.fal_vocals_model, s.fal_instrumental_model]
        for candidate in dict.fromkeys(models):
            request = self._request(provider, run_id, candidate)
            if request is None:
                return False
            if await self._ours(provider, *request):
                return True
            if provider != FAL:
                break
        return False

    async def _ours(self, provider: str, url: str, headers: dict[str, str]) -> bool:
        try:
            async with httpx.AsyncClient(
                timeout=self.settings.provider_request_timeout_s, transport=self._transport
            ) as client:
                response = await client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("could not confirm a run", provider=provider, error=type(exc).__name__)
            raise RetryLater(f"could not ask {provider} about the run") from None
        if response.status_code == 200:
            return True
        if response.status_code in (401, 403, 404, 422):
            return False
        raise RetryLater(f"{provider} answered {response.status_code} about the run")

    def _request(self, provider: str, run_id: str, model: str) -> tuple[str, dict[str, str]] | None:
        s = self.settings
        quoted = quote(run_id, safe="")
        if provider == REPLICATE and s.replicate_api_token is not None:
            url = f"{s.replicate_base_url.rstrip('/')}/v1/predictions/{quoted}"
            return url, {"Authorization": f"Bearer {s.replicate_api_token.get_secret_value()}"}
        if provider == FAL and s.fal_key is not None:
            # fal's queue addresses a request by the app's owner/alias, without its path.
            app = "/".join(model.split("/")[:2])
            url = f"{s.fal_queue_url.rstrip('/')}/{app}/requests/{quoted}/status"
            return url, {"Authorization": f"Key {s.fal_key.get_secret_value()}"}
        return None
