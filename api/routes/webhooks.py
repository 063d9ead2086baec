"""The user's webhook signing secret (webhook URLs are given per track)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import CurrentUser, ServicesDep
from api.schemas import WebhookSettingsOut
from domain.webhooks.outgoing import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

router = APIRouter(prefix="/api/me/webhook", tags=["webhooks"])


def _out(secret: str) -> WebhookSettingsOut:
    return WebhookSettingsOut(
        secret=secret,
        signature_header=SIGNATURE_HEADER,
        timestamp_header=TIMESTAMP_HEADER,
        event_id_header=EVENT_ID_HEADER,
        scheme="sha256=hex(HMAC_SHA256(secret, f'{timestamp}.{raw body}'))",
    )


# Both answers carry the signing secret: no browser or proxy cache may keep them.
NO_STORE = "no-store"


@router.get("", response_model=WebhookSettingsOut)
async def webhook_settings(
    user: CurrentUser, services: ServicesDep, response: Response
) -> WebhookSettingsOut:
    response.headers["Cache-Control"] = NO_STORE
    return _out(await services.jobs.webhook_secret(user.id))


@router.post("/rotate", response_model=WebhookSettingsOut)
async def rotate_webhook_secret(
    user: CurrentUser, services: ServicesDep, response: Response
) -> WebhookSettingsOut:
    response.headers["Cache-Control"] = NO_STORE
    return _out(await services.jobs.webhook_secret(user.id, rotate=True))
