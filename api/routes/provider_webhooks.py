"""Deliveries from fal and Replicate about our paid submissions.

    POST /api/provider-webhooks/{provider}?token=<the submission's ledger token>

No user token: the provider's signature is the authentication. The route parses, calls
the use case (domain/webhooks/deliveries.py: verify, accept once, confirm an unseen run,
record, tell the workflow through the signal this module supplies) and shapes the answer.

Providers retry deliveries that do not get a 2xx, so the answer is quick, and a 503 only
when retrying can help (a key we could not fetch, Temporal out of reach).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from pydantic import BaseModel
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Services, ServicesDep
from core.contracts import PROVIDER_EVENT_SIGNAL, ProviderEvent, track_workflow_id
from core.logging import get_logger
from domain.webhooks.deliveries import (
    ProviderDeliveries,
    Replayed,
    RetryLater,
    UnknownSubmission,
    WorkflowNotifier,
)
from domain.webhooks.incoming import (
    PROVIDERS,
    WEBHOOK_PATH,
    MalformedDelivery,
    NotAuthentic,
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


def _deliveries(request: Request, services: Services) -> ProviderDeliveries:
    """One per app, so fetched keys, secrets and a learned fal user id are kept."""
    deliveries: ProviderDeliveries | None = getattr(request.app.state, "provider_deliveries", None)
    if deliveries is None:
        deliveries = ProviderDeliveries.from_settings(
            services.sessions, services.jobs, services.settings
        )
        request.app.state.provider_deliveries = deliveries
    return deliveries


def _signaller(services: Services) -> WorkflowNotifier:
    """The use case's port to the track's workflow: a Temporal signal."""

    async def signal(track_id: uuid.UUID, event: ProviderEvent) -> bool:
        workflow_id = track_workflow_id(track_id)
        try:
            client = await asyncio.wait_for(services.temporal.client(), timeout=SIGNAL_TIMEOUT_S)
            await client.get_workflow_handle(workflow_id).signal(
                PROVIDER_EVENT_SIGNAL, event, rpc_timeout=timedelta(seconds=SIGNAL_TIMEOUT_S)
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False  # closed or never started: the delivery was valid all the same
            log.warning("could not signal the workflow", workflow_id=workflow_id, error=str(exc))
            raise RetryLater("could not reach the track's workflow") from None
        except Exception as exc:
            log.warning("could not reach Temporal", workflow_id=workflow_id, error=str(exc))
            raise RetryLater("could not reach Temporal") from None
        return True

    return signal


def _retry_later(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{reason}; retry later")


@router.post(
    "/{provider}",
    response_model=ProviderWebhookAck,
    summary="A signed delivery from fal or Replicate",
    responses={
        400: {"description": "Authentic, but not a body that can be read"},
        401: {
            "description": "Unsigned, badly signed, stale, for another provider account, or "
            "about a run the provider does not confirm to our key"
        },
        404: {"description": "Unknown provider, or no submission of it with this token"},
        409: {"description": "This signed delivery was received already (a replay)"},
        413: {"description": "Body over MAX_REQUEST_BYTES"},
        503: {
            "description": "Keys, the provider's status API or Temporal out of reach; "
            "the provider should retry"
        },
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
    deliveries = _deliveries(request, services)
    try:
        outcome = await deliveries.receive(
            provider, token, request.headers, body, _signaller(services)
        )
    except NotAuthentic as exc:
        log.warning("refused a provider webhook", provider=provider, reason=str(exc))
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    except MalformedDelivery as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except UnknownSubmission as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except Replayed as exc:
        log.warning("refused a replayed provider webhook", provider=provider)
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except (VerifierUnavailable, RetryLater) as exc:
        raise _retry_later(str(exc)) from None
    return ProviderWebhookAck(
        outcome=outcome.outcome,
        run_id=outcome.run_id,
        state=outcome.state,
        workflow_notified=outcome.workflow_notified,
    )
