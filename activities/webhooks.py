"""Deliver a job's final state to the user's webhook, signed, retried by Temporal.

Only the answer's status is read: its body, which the user's server chooses and could
make endless, is never read, so no answer can cost the worker memory or time.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from datetime import UTC, datetime

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.recording import recorded_attempt
from core.contracts import ErrorCode, JobStatus, WebhookInput
from core.egress import Resolver, VettedTarget, open_vetted, system_resolver
from core.models import Track
from core.settings import Settings
from domain.tracks.jobs import JobStore
from domain.webhooks.outgoing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookTargetRejected,
    sign,
    vet_target,
    webhook_policy,
)

EVENT_TYPES = {
    JobStatus.COMPLETE: "track.completed",
    JobStatus.FAILED: "track.failed",
    JobStatus.CANCELLED: "track.cancelled",
}


class WebhookActivities:
    def __init__(
        self, store: JobStore, settings: Settings, resolve: Resolver = system_resolver
    ) -> None:
        self.store = store
        self.settings = settings
        # DNS for webhook targets; tests pass a hostile resolver here.
        self.resolve = resolve

    @activity.defn(name="deliver_webhook")
    async def deliver_webhook(self, delivery: WebhookInput) -> None:
        track = delivery.track
        assert track.webhook_url is not None
        async with recorded_attempt(
            self.store, track_id=track.track_id, job_id=track.job_id, event="webhook"
        ) as attempt:
            try:
                target = await vet_target(
                    track.webhook_url, webhook_policy(self.settings, self.resolve)
                )
            except WebhookTargetRejected as exc:
                raise ApplicationError(
                    str(exc), type=ErrorCode.WEBHOOK_TARGET_REJECTED, non_retryable=True
                ) from exc
            # The same id on every attempt, so receivers can drop duplicates.
            event_id = f"evt_{track.job_id.hex}_{delivery.status.value.lower()}"
            body = json.dumps(await self._event(delivery, event_id), separators=(",", ":"))
            timestamp = int(time.time())
            secret = await self.store.webhook_secret(track.user_id)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "SoundFoundry-Webhooks/1",
                SIGNATURE_HEADER: sign(secret, timestamp, body.encode()),
                TIMESTAMP_HEADER: str(timestamp),
                EVENT_ID_HEADER: event_id,
            }
            try:
                status = await self._post(target, body, headers)
            except httpx.HTTPError as exc:
                raise ApplicationError(
                    f"webhook unreachable: {type(exc).__name__}", type=ErrorCode.WEBHOOK_UNREACHABLE
                ) from exc
            if status >= 300:
                # 4xx other than 408/429 will not get better by retrying.
                permanent = 400 <= status < 500 and status not in (408, 429)
                raise ApplicationError(
                    f"webhook answered {status}",
                    type=f"webhook_http_{status}",
                    non_retryable=permanent,
                )
            attempt.message = f"Webhook delivered ({EVENT_TYPES[delivery.status]}, {event_id})"

    async def _post(self, target: VettedTarget, body: str, headers: dict[str, str]) -> int:
        """POST to the vetted address (or through WEBHOOK_EGRESS_PROXY), never to whatever
        the name resolves to by now; proxies from the environment are ignored. Returns the
        answer's status; its body is closed unread."""
        proxy = self.settings.webhook_egress_proxy
        async with httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s,
            follow_redirects=False,
            trust_env=False,
            verify=_tls_context(),
            proxy=proxy.get_secret_value() if proxy else None,
        ) as http:
            if proxy:
                # The proxy resolves and connects; it is where production enforces egress.
                async with http.stream("POST", target.url, content=body, headers=headers) as answer:
                    return answer.status_code
            # Redirects are not followed, so the policy only applies to the vetted target.
            policy = webhook_policy(self.settings, self.resolve)
            async with open_vetted(
                http, "POST", target, policy, headers=headers, content=body
            ) as answer:
                return answer.status_code

    async def _event(self, delivery: WebhookInput, event_id: str) -> dict[str, object]:
        track = delivery.track
        async with self.store.sessions() as session:
            row = await session.get(Track, track.track_id)
        return {
            "id": event_id,
            "type": EVENT_TYPES[delivery.status],
            "created_at": datetime.now(UTC).isoformat(),
            "data": {
                "track_id": str(track.track_id),
                "job_id": str(track.job_id),
                "status": delivery.status.value,
                "error_code": delivery.error_code,
                "provider": row.provider if row else None,
                "duration_s": track.request.duration_s,
                "prompt": track.request.prompt,
            },
        }


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Made once: a client that builds its own loads the CA bundle, ~18 ms of CPU per
    # delivery. Like the client, it ignores SSL_CERT_* from the environment.
    return httpx.create_ssl_context(trust_env=False)
