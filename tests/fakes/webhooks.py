"""Signed webhook deliveries, as fal and Replicate make them, for the fakes and for tests.

Each fake owns a signer (Replicate: a `whsec_` secret it also serves at
`GET /v1/webhooks/default/secret`; fal: an ED25519 key pair whose public half it serves at
`GET /.well-known/jwks.json`) and a `WebhookSender`. A submission that names a webhook
gets one POST of the job's final state there once the job's `running_s` has passed since
it was submitted (poll counts play no part), or as soon as it is cancelled, sent from the
fake's own event loop. Tests steer it through `fake.webhooks`:

    fake.webhooks.enabled = False              # submissions name webhooks, none is sent
    fake.webhooks.forgery = Forgery.WRONG_KEY   # every delivery forged this way
    fake.webhooks_sent                          # delivery POSTs made (retries included)
    fake.webhooks.log                           # SentWebhook(url, run_id, status, forgery)
    await fake.webhooks.send(url, body, run_id=..., forgery=Forgery.STALE)   # by hand

A delivery that does not get a 2xx is retried a few times, as the providers do.

`api_socket`, `live_api` and `webhook_settings` below put a real API on a loopback port
for the fakes to deliver to (see tests/e2e/test_provider_webhooks.py for the recipe).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.fakes import FakeJob
from tests.live_server import LOOPBACK, LiveServer, bound_socket

if TYPE_CHECKING:
    from tests.conftest import Stack
    from tests.fakes.fal_server import FalFake
    from tests.fakes.replicate_server import ReplicateFake

# Older than any tolerance a receiver would accept.
STALE_BY_S = 3600


class Forgery(StrEnum):
    """Ways a delivery can fail to be the provider's own."""

    WRONG_KEY = "wrong_key"  # properly signed, with a key the receiver does not know
    BAD_SIGNATURE = "bad_signature"  # the right key's signature, altered
    TAMPERED_BODY = "tampered_body"  # signed, then the body changed in transit
    STALE = "stale"  # the right key, a timestamp an hour old (a replay)
    UNSIGNED = "unsigned"  # no signature headers at all


class Signer(Protocol):
    def sign(self, body: bytes, *, run_id: str, timestamp: int) -> dict[str, str]: ...

    def stranger(self) -> Signer: ...

    def altered(self, headers: dict[str, str]) -> dict[str, str]: ...


def _flip_first_char(value: str, alphabet: str) -> str:
    replacement = alphabet[(alphabet.index(value[0]) + 1) % len(alphabet)]
    return replacement + value[1:]


class StandardWebhookSigner:
    """Replicate's signing: Standard Webhooks, HMAC-SHA256 under a `whsec_` secret."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret or "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()

    def sign(self, body: bytes, *, run_id: str, timestamp: int) -> dict[str, str]:
        # By hand rather than with the `standardwebhooks` package the API verifies with, so
        # the two sides check each other.
        message_id = f"msg_{uuid.uuid4().hex}"
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": f"v1,{digest}",
        }

    def stranger(self) -> StandardWebhookSigner:
        return StandardWebhookSigner()

    def altered(self, headers: dict[str, str]) -> dict[str, str]:
        version, _, digest = headers["webhook-signature"].partition(",")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        return {**headers, "webhook-signature": f"{version},{_flip_first_char(digest, alphabet)}"}


class FalSigner:
    """fal's signing: ED25519 over request id, user id, timestamp and the body's SHA-256."""

    def __init__(self, user_id: str | None = None) -> None:
        self.user_id = user_id or f"user-{uuid.uuid4().hex[:12]}"
        self.key = Ed25519PrivateKey.generate()
        self.kid = uuid.uuid4().hex[:16]
        # Keys still published after a rotation (fal keeps old ones up for a while).
        self.retired: list[tuple[str, Ed25519PrivateKey]] = []

    def sign(self, body: bytes, *, run_id: str, timestamp: int) -> dict[str, str]:
        lines = (run_id, self.user_id, str(timestamp), hashlib.sha256(body).hexdigest())
        signature = self.key.sign("\n".join(lines).encode())
        return {
            "X-Fal-Webhook-Request-Id": run_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": signature.hex(),
        }

    def rotate(self, *, keep_old: bool = False) -> None:
        """Sign with a new key from now on; publish the old one too only if `keep_old`."""
        if keep_old:
            self.retired.append((self.kid, self.key))
        self.key, self.kid = Ed25519PrivateKey.generate(), uuid.uuid4().hex[:16]

    def jwks(self) -> dict[str, Any]:
        def jwk(kid: str, key: Ed25519PrivateKey) -> dict[str, str]:
            raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            return {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": kid,
                "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
            }

        return {"keys": [jwk(self.kid, self.key), *(jwk(k, key) for k, key in self.retired)]}

    def stranger(self) -> FalSigner:
        return FalSigner(user_id=self.user_id)

    def for_user(self, user_id: str) -> FalSigner:
        """fal signing another customer's deliveries: the same published keys, their user
        id (what an attacker with their own fal account receives)."""
        other = FalSigner(user_id=user_id)
        other.key, other.kid, other.retired = self.key, self.kid, self.retired
        return other

    def altered(self, headers: dict[str, str]) -> dict[str, str]:
        signature = headers["X-Fal-Webhook-Signature"]
        return {
            **headers,
            "X-Fal-Webhook-Signature": _flip_first_char(signature, "0123456789abcdef"),
        }


def replicate_prediction(run_id: str, status: str = "succeeded", error: str | None = None) -> bytes:
    """A minimal final prediction object, as Replicate's webhook carries it."""
    body = {"id": run_id, "status": status, "error": error, "output": None, "logs": ""}
    return json.dumps(body).encode()


def fal_completion(request_id: str, *, ok: bool = True, error: str | None = None) -> bytes:
    """fal's completion delivery for one request."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK" if ok else "ERROR",
        "payload": {} if ok else {"detail": error},
    }
    if not ok:
        body["error"] = error or "failed"
    return json.dumps(body).encode()


@dataclass(frozen=True)
class SentWebhook:
    url: str
    run_id: str
    status: int | None  # None: the POST got no answer (connection refused, timeout)
    forgery: Forgery | None


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


class WebhookSender:
    """Posts deliveries for one fake: on schedule when its jobs end, or by hand."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.enabled = True
        self.forgery: Forgery | None = None
        self.attempts = 3  # per delivery, as long as the answer is not 2xx
        self.retry_delay_s = 0.3
        self.timeout_s = 10.0
        self.log: list[SentWebhook] = []
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self.log)

    def signed(
        self,
        body: bytes,
        *,
        run_id: str,
        forgery: Forgery | None = None,
        later_by_s: int = 0,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a delivery, genuine or forged as asked; `later_by_s`
        signs it as a retry that many seconds on would be (a fresh signature)."""
        now = int(time.time()) + later_by_s
        headers = {"Content-Type": "application/json", "User-Agent": "fake-provider-webhooks"}
        if forgery is Forgery.UNSIGNED:
            return body, headers
        signer = self.signer.stranger() if forgery is Forgery.WRONG_KEY else self.signer
        timestamp = now - STALE_BY_S if forgery is Forgery.STALE else now
        signature = signer.sign(body, run_id=run_id, timestamp=timestamp)
        if forgery is Forgery.BAD_SIGNATURE:
            signature = self.signer.altered(signature)
        if forgery is Forgery.TAMPERED_BODY:
            body = body.replace(b'"succeeded"', b'"failed"').replace(b'"OK"', b'"ERROR"') + b" "
        return body, {**headers, **signature}

    async def send(
        self, url: str, body: bytes, *, run_id: str, forgery: Forgery | None = None
    ) -> int | None:
        """One delivery, retried while it gets no 2xx; returns the last status (or None)."""
        result: int | None = None
        # One client per delivery, on whichever loop sends it; the TLS context is made
        # once (loading the CA bundle per client costs more than the delivery).
        async with httpx.AsyncClient(timeout=self.timeout_s, verify=_tls()) as client:
            for attempt in range(self.attempts):
                if attempt:
                    await asyncio.sleep(self.retry_delay_s * attempt)
                # Signed afresh per attempt, as a provider does (a new timestamp).
                content, headers = self.signed(body, run_id=run_id, forgery=forgery)
                try:
                    response = await client.post(url, content=content, headers=headers)
                    result = response.status_code
                except httpx.HTTPError:
                    result = None
                with self._lock:
                    self.log.append(SentWebhook(url, run_id, result, forgery))
                if result is not None and 200 <= result < 300:
                    break
                # A refusal of a forgery is the answer wanted; retrying proves nothing.
                if forgery is not None and result is not None and result < 500:
                    break
        return result

    def schedule(self, job: FakeJob, url: str, final_body: Callable[[], dict[str, Any]]) -> None:
        """Deliver `final_body()` to `url` once `job` ends; call from the fake's handlers."""
        task = asyncio.get_running_loop().create_task(self._deliver_when_done(job, url, final_body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_when_done(
        self, job: FakeJob, url: str, final_body: Callable[[], dict[str, Any]]
    ) -> None:
        while not job.cancelled:
            left = job.spec.running_s - (time.monotonic() - job.submitted_at)
            if left <= 0:
                break
            # A cancel is noticed within a quarter second; hundreds of jobs waiting here
            # must not keep the fake's loop (and the machine) busy.
            await asyncio.sleep(min(left, 0.25))
        # The provider has finished the job: polls from now on see it finished too, so a
        # receiver that fetches the result after the webhook finds it.
        job.polls = max(job.polls, job.spec.queued_polls + job.spec.running_polls)
        if not self.enabled:
            return
        body = json.dumps(final_body()).encode()
        await self.send(url, body, run_id=job.id, forgery=self.forgery)


# -- a real API on a socket, for the fakes to deliver to ------------------------------


@pytest.fixture
def api_socket() -> Iterator[socket.socket]:
    """A bound loopback socket for the API, made before the stack so its URL can be
    PUBLIC_BASE_URL (where the worker points the providers' webhooks)."""
    sock = bound_socket()
    try:
        yield sock
    finally:
        sock.close()


def api_url(sock: socket.socket) -> str:
    return f"http://{LOOPBACK}:{sock.getsockname()[1]}"


def webhook_settings(fal: FalFake, replicate: ReplicateFake, sock: socket.socket) -> dict[str, Any]:
    """Settings (on top of hosted_settings) for providers that deliver to the live API."""
    return {
        "provider_webhooks_enabled": True,
        "public_base_url": api_url(sock),
        "fal_webhook_jwks_url": fal.jwks_url,
    }


@pytest_asyncio.fixture
async def live_api(stack: Stack, api_socket: socket.socket) -> AsyncIterator[str]:
    """The stack's API served on `api_socket`; yields its base URL."""
    from api.main import create_app

    server = LiveServer(create_app(stack.settings), api_socket)
    await asyncio.to_thread(server.__enter__)
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)
