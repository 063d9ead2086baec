"""Deliveries from fal and Replicate about our paid submissions.

    POST /api/provider-webhooks/{provider}?token=<the submission's ledger token>

No user token: the provider's signature is the authentication (domain/webhooks/incoming.py
says how each is checked). Anything not proven authentic answers 401 and changes
nothing. A verified delivery records the run id on its ledger row, which is what resolves
a submit whose answer was lost, then tells the track's workflow through a signal.

Providers retry deliveries that do not get a 2xx, so the answer is quick, and a 503 only
when retrying can help (a key we could not fetch, Temporal out of reach).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Services, ServicesDep
from core.contracts import PROVIDER_EVENT_SIGNAL, ProviderEvent, track_workflow_id
from core.logging import get_logger
from core.models import ProviderSubmission
from domain.tracks.submissions import SubmissionLedger
from domain.webhooks.incoming import (
    FINAL_STATES,
    PROVIDERS,
    WEBHOOK_PATH,
    MalformedDelivery,
    NotAuthentic,
    ProviderWebhookVerifier,
    VerifierUnavailable,
)

log = get_logger("soundfoundry.api.provider_webhooks")

router = APIRouter(prefix=WEBHOOK_PATH, tags=["provider webhooks"])

# Temporal gets this long to take the signal; past it the provider is asked to retry.
SIGNAL_TIMEOUT_S = 5.0


class ProviderWebhookAck(BaseModel):
    # "recorded": the run id is on the submission's row; "duplicate": the row already
    # followed another run id, so this one is a second paid job (recorded in the job log).
    outcome: Literal["recorded", "duplicate"]
    run_id: str
    state: str
    # False when the track's workflow has already closed (or never started).
    workflow_notified: bool


def _verifier(request: Request, services: Services) -> ProviderWebhookVerifier:
    """One per app, so fetched keys and secrets are kept between deliveries."""
    verifier: ProviderWebhookVerifier | None = getattr(
        request.app.state, "provider_webhook_verifier", None
    )
    if verifier is None:
        verifier = ProviderWebhookVerifier.from_settings(services.settings)
        request.app.state.provider_webhook_verifier = verifier
    return verifier


async def _signal_workflow(
    services: Services, row: ProviderSubmission, event: ProviderEvent
) -> bool:
    """Tell the track's workflow; False if it has closed. Unreachable Temporal is a 503."""
    workflow_id = track_workflow_id(row.track_id)
    try:
        client = await asyncio.wait_for(services.temporal.client(), timeout=SIGNAL_TIMEOUT_S)
        await client.get_workflow_handle(workflow_id).signal(
            PROVIDER_EVENT_SIGNAL, event, rpc_timeout=timedelta(seconds=SIGNAL_TIMEOUT_S)
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False  # closed or never started: the delivery was valid, nothing to tell
        log.warning("could not signal the workflow", workflow_id=workflow_id, error=str(exc))
        raise _retry_later("could not reach the track's workflow") from None
    except Exception as exc:
        log.warning("could not reach Temporal", workflow_id=workflow_id, error=str(exc))
        raise _retry_later("could not reach Temporal") from None
    return True


def _retry_later(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{reason}; retry later")


@router.post(
    "/{provider}",
    response_model=ProviderWebhookAck,
    summary="A signed delivery from fal or Replicate",
    responses={
        400: {"description": "Authentic, but not a body that can be read"},
        401: {"description": "Unsigned, badly signed or stale: not from the provider"},
        404: {"description": "Unknown provider, or no submission of it with this token"},
        413: {"description": "Body over MAX_REQUEST_BYTES"},
        503: {"description": "Keys or Temporal out of reach; the provider should retry"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": (
                "The provider's own payload, verified byte for byte: Replicate's prediction "
                "object (headers webhook-id, webhook-timestamp, webhook-signature) or fal's "
                "{request_id, gateway_request_id, status, payload, error} (headers "
                "X-Fal-Webhook-Request-Id, -User-Id, -Timestamp, -Signature)."
            ),
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def provider_webhook(
    request: Request,
    services: ServicesDep,
    provider: Annotated[
        str,
        Path(
            description="Who sends the delivery",
            json_schema_extra={"enum": list(PROVIDERS)},
        ),
    ],
    token: Annotated[
        str,
        Query(
            min_length=1,
            max_length=64,
            description="The submission's ledger token, from the webhook URL it was sent with",
        ),
    ],
) -> ProviderWebhookAck:
    """Verify a provider's webhook, record the run id it names on the submission's row and
    signal the track's workflow. No user token: the provider's signature authenticates."""
    if provider not in PROVIDERS:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"unknown provider {provider!r}; webhooks come from {', '.join(PROVIDERS)}",
        )
    body = await request.body()  # the body-size middleware has counted it already
    try:
        event = await _verifier(request, services).verify(provider, token, request.headers, body)
    except NotAuthentic as exc:
        log.warning("refused a provider webhook", provider=provider, reason=str(exc))
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    except MalformedDelivery as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except VerifierUnavailable as exc:
        raise _retry_later(str(exc)) from None

    ledger = SubmissionLedger(services.sessions)
    row = await ledger.by_token(token)
    if row is None or row.provider != provider:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {provider} submission has this token")

    known_before = row.run_id
    resolution = await ledger.accept(row.id, event.run_id, {}, via="webhook")
    if resolution.duplicate_of is not None:
        # Two paid jobs for one submission: the worker's reconciler stops what it finds
        # open; the job log says what happened. The workflow follows the other run.
        message = (
            f"Duplicate {provider} job found: run {event.run_id} ({event.state}) for a "
            f"submission already following run {resolution.duplicate_of}"
        )
        await services.jobs.add_event(
            row.job_id,
            "duplicate_job",
            message,
            level="warning",
            provider=provider,
            provider_run_id=event.run_id,
            data={"recorded_run_id": resolution.duplicate_of, "submission_id": str(row.id)},
        )
        log.warning(message, provider=provider, job_id=str(row.job_id))
        return ProviderWebhookAck(
            outcome="duplicate", run_id=event.run_id, state=event.state, workflow_notified=False
        )

    if known_before is None:
        await services.jobs.add_event(
            row.job_id,
            "submission_resolved",
            f"Run {event.run_id} of {provider} found by its webhook (the submit's answer "
            "had not been recorded)",
            provider=provider,
            provider_run_id=event.run_id,
        )
    notified = False
    if event.state in FINAL_STATES:
        notified = await _signal_workflow(services, row, event)
    log.info(
        "provider webhook",
        provider=provider,
        provider_run_id=event.run_id,
        state=event.state,
        workflow_notified=notified,
    )
    return ProviderWebhookAck(
        outcome="recorded", run_id=event.run_id, state=event.state, workflow_notified=notified
    )
