"""Provider webhooks: is a delivery really from fal or Replicate, and what does it say?

Every paid submission has a ledger row with a random token; when webhooks are on, the
submission names `{PUBLIC_BASE_URL}/api/provider-webhooks/<provider>?token=<token>` as
its webhook. The token only says which row a delivery is about: it is in the URL, which
neither provider signs. What authenticates a delivery is the provider's signature:

* Replicate follows Standard Webhooks: headers `webhook-id`, `webhook-timestamp` and
  `webhook-signature` (space-separated `v1,<base64>` entries), each an HMAC-SHA256 of
  `<id>.<timestamp>.<raw body>` keyed with the account's `whsec_` secret. The secret is
  configured, or fetched once from Replicate's API.
* fal signs with ED25519: `X-Fal-Webhook-Signature` (hex) covers the lines request id,
  user id, timestamp (the other `X-Fal-Webhook-*` headers) and the hex SHA-256 of the raw
  body. The public keys are fal's published JWKS, fetched and kept; a signature that
  matches none of them fetches the set again, at most once a minute, in case fal rotated.

Both carry a timestamp, refused when further from our clock than the tolerance, so a
captured delivery cannot be replayed later; inside the tolerance, the digest of what the
signature covers (`VerifiedDelivery.digest`) lets the use case accept it once.

fal's keys sign for every fal customer, so a fal delivery must also name our fal user
(`X-Fal-Webhook-User-Id`): the configured FAL_WEBHOOK_USER_ID, or, when that is unset,
the user id of the first delivery whose run the provider confirmed to our own key (fal's
API and client expose no "who am I" for a key, so that is how it is learned).

Nothing here knows HTTP frameworks; the API route maps the exceptions to answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks import Webhook

from core.contracts import ProviderEvent
from core.logging import get_logger
from core.settings import Settings

log = get_logger("soundfoundry.provider_webhooks")

REPLICATE = "replicate"
FAL = "fal"
PROVIDERS = (FAL, REPLICATE)
WEBHOOK_PATH = "/api/provider-webhooks"

# ProviderEvent.state values that end a job; anything else is not worth a signal.
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

REPLICATE_ID_HEADER = "webhook-id"
REPLICATE_TIMESTAMP_HEADER = "webhook-timestamp"
REPLICATE_SIGNATURE_HEADER = "webhook-signature"
FAL_REQUEST_ID_HEADER = "x-fal-webhook-request-id"
FAL_USER_ID_HEADER = "x-fal-webhook-user-id"
FAL_TIMESTAMP_HEADER = "x-fal-webhook-timestamp"
FAL_SIGNATURE_HEADER = "x-fal-webhook-signature"

# fal's JWKS is fetched again on an unknown signature at most this often, so forged
# deliveries cannot make us hammer fal.
JWKS_REFETCH_INTERVAL_S = 60.0
ERROR_MAX_CHARS = 1000
# What the ledger's run_id column holds.
RUN_ID_MAX_CHARS = 128

_REPLICATE_STATES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "cancelled",
    "starting": "running",
    "processing": "running",
}
_FAL_STATES = {"OK": "succeeded", "ERROR": "failed"}


class NotAuthentic(Exception):
    """Not proven to come from the provider: unsigned, badly signed, or stale."""


class SignatureMismatch(NotAuthentic):
    """Well formed and fresh, but no known key made the signature."""


class NotOurAccount(NotAuthentic):
    """Authentic, but about another customer's account at the provider."""


class MalformedDelivery(Exception):
    """Authentic, but not a body we can read."""


class VerifierUnavailable(Exception):
    """The provider's secret or keys cannot be had right now; the provider should retry."""


def webhook_url(public_base_url: str, provider: str, token: str) -> str:
    """The URL a submission names as its webhook (what the worker sends the provider)."""
    if provider not in PROVIDERS:
        raise ValueError(f"no webhooks for provider {provider!r}")
    query = urlencode({"token": token})
    return f"{public_base_url.rstrip('/')}{WEBHOOK_PATH}/{provider}?{query}"


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _required(headers: Mapping[str, str], names: Sequence[str]) -> list[str]:
    lowered = _lowered(headers)
    missing = [name for name in names if not lowered.get(name)]
    if missing:
        raise NotAuthentic(f"unsigned delivery: missing header(s) {', '.join(missing)}")
    return [lowered[name] for name in names]


def _check_timestamp(value: str, tolerance_s: int, now: float | None) -> int:
    # Seconds since the epoch, as ASCII digits; anything else is not a timestamp.
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise NotAuthentic("the signature timestamp is not a number of seconds")
    timestamp = int(value)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        age = round(current - timestamp)
        when = f"{age} s ago" if age >= 0 else f"{-age} s in the future"
        raise NotAuthentic(f"stale delivery: signed {when}, outside the {tolerance_s} s tolerance")
    return timestamp


# -- Replicate ------------------------------------------------------------------------


def _replicate_signed(
    headers: Mapping[str, str], body: bytes, tolerance_s: int, now: float | None
) -> tuple[str, int, str, list[str]]:
    """(id, timestamp, body text, offered v1 signatures) of a well formed, fresh delivery."""
    message_id, timestamp_value, signatures = _required(
        headers,
        (REPLICATE_ID_HEADER, REPLICATE_TIMESTAMP_HEADER, REPLICATE_SIGNATURE_HEADER),
    )
    timestamp = _check_timestamp(timestamp_value, tolerance_s, now)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise NotAuthentic("the body is not UTF-8, so it cannot carry a signature") from None
    offered = [
        encoded
        for version, _, encoded in (entry.partition(",") for entry in signatures.split())
        if version == "v1"
    ]
    if not offered:
        raise NotAuthentic("unsigned delivery: no v1 entry in webhook-signature")
    return message_id, timestamp, text, offered


def _digest(provider: str, signed: bytes) -> str:
    return hashlib.sha256(provider.encode() + b"\n" + signed).hexdigest()


def verify_replicate(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int,
    now: float | None = None,
) -> str:
    """The delivery's digest if a `v1` signature of it matches `secret`; NotAuthentic if
    none does."""
    message_id, timestamp, text, offered = _replicate_signed(headers, body, tolerance_s, now)
    try:
        signer = Webhook(secret)
    except Exception:
        raise VerifierUnavailable("the Replicate signing secret is not a whsec_ key") from None
    # The library signs exactly what the scheme prescribes; the comparison is ours so the
    # tolerance is ours too (its own verify() fixes it at five minutes).
    expected = signer.sign(message_id, datetime.fromtimestamp(timestamp, UTC), text)
    expected_digest = base64.b64decode(expected.partition(",")[2])
    for encoded in offered:
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(candidate, expected_digest):
            return _digest(REPLICATE, f"{message_id}.{timestamp}.".encode() + body)
    raise SignatureMismatch("bad signature: no v1 signature matches the Replicate secret")


def parse_replicate(token: str, body: bytes) -> ProviderEvent:
    """The prediction object a Replicate webhook carries, as a ProviderEvent."""
    prediction = _json_object(body)
    run_id = _run_id(prediction.get("id"), "the prediction's id")
    status = prediction.get("status")
    state = _REPLICATE_STATES.get(status) if isinstance(status, str) else None
    if state is None:
        raise MalformedDelivery(f"unknown prediction status {status!r}")
    return ProviderEvent(
        token=token,
        provider=REPLICATE,
        run_id=run_id,
        state=state,
        error=_error_text(prediction.get("error")),
    )


class ReplicateSigningSecret:
    """The configured secret, else the one Replicate's API hands out, fetched once."""

    def __init__(
        self,
        *,
        configured: str | None,
        base_url: str,
        api_token: str | None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._secret = configured
        self._base_url = base_url.rstrip("/")
        self._api_token = api_token
        self._timeout_s = timeout_s
        self._transport = transport
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        if self._secret is not None:
            return self._secret
        async with self._lock:
            if self._secret is None:
                self._secret = await self._fetch()
            return self._secret

    async def _fetch(self) -> str:
        if not self._api_token:
            raise VerifierUnavailable(
                "no Replicate signing secret: set REPLICATE_WEBHOOK_SECRET or REPLICATE_API_TOKEN"
            )
        url = f"{self._base_url}/v1/webhooks/default/secret"
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout_s, transport=self._transport
            ) as client:
                response = await client.get(
                    url, headers={"Authorization": f"Bearer {self._api_token}"}
                )
            response.raise_for_status()
            key = response.json().get("key")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("could not fetch the Replicate webhook secret", error=str(exc))
            raise VerifierUnavailable("could not fetch the Replicate webhook secret") from None
        if not isinstance(key, str) or not key.startswith("whsec_"):
            raise VerifierUnavailable("Replicate answered no whsec_ webhook secret")
        return key


# -- fal ------------------------------------------------------------------------------


def fal_signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """What fal's ED25519 signature covers."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((request_id, user_id, timestamp, digest)).encode()


@dataclass(frozen=True)
class _FalSigned:
    signature: bytes
    message: bytes
    user_id: str


def _fal_signed(
    headers: Mapping[str, str], body: bytes, tolerance_s: int, now: float | None
) -> _FalSigned:
    """The signature, signed message and user id of a well formed, fresh delivery."""
    request_id, user_id, timestamp, signature_hex = _required(
        headers,
        (FAL_REQUEST_ID_HEADER, FAL_USER_ID_HEADER, FAL_TIMESTAMP_HEADER, FAL_SIGNATURE_HEADER),
    )
    _check_timestamp(timestamp, tolerance_s, now)
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        raise NotAuthentic("bad signature: not hex") from None
    if len(signature) != 64:
        raise NotAuthentic("bad signature: an ED25519 signature is 64 bytes")
    return _FalSigned(signature, fal_signed_message(request_id, user_id, timestamp, body), user_id)


def _made_by_any(keys: Sequence[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


def verify_fal(
    keys: Sequence[Ed25519PublicKey],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int,
    user_id: str | None = None,
    now: float | None = None,
) -> tuple[str, str]:
    """(digest, user id) of a delivery one of `keys` signed; NotAuthentic if none did, and
    NotOurAccount if it names a fal user other than `user_id` (None: not known yet)."""
    signed = _fal_signed(headers, body, tolerance_s, now)
    if not _made_by_any(keys, signed.signature, signed.message):
        raise SignatureMismatch("bad signature: it matches none of fal's published keys")
    if user_id is not None and not hmac.compare_digest(signed.user_id, user_id):
        raise NotOurAccount("the delivery is for another fal account")
    return _digest(FAL, signed.message), signed.user_id


def parse_jwks(document: Any) -> list[Ed25519PublicKey]:
    """The ED25519 keys of a JWKS document (`keys[].x`: base64url raw public keys)."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("a JWKS document has a `keys` list")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("crv", "Ed25519") != "Ed25519":
            continue
        encoded = entry.get("x")
        if not isinstance(encoded, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (binascii.Error, ValueError):
            continue  # one odd key must not hide the others
    return keys


class FalKeySet:
    """fal's published webhook keys, fetched on first use and again on an unknown signature."""

    def __init__(
        self,
        jwks_url: str,
        *,
        timeout_s: float = 10.0,
        refetch_interval_s: float = JWKS_REFETCH_INTERVAL_S,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_url = jwks_url
        self._timeout_s = timeout_s
        self._refetch_interval_s = refetch_interval_s
        self._transport = transport
        self._clock = clock
        self._keys: list[Ed25519PublicKey] | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _may_fetch(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self._refetch_interval_s

    async def current(self) -> list[Ed25519PublicKey]:
        """The cached keys, fetched first if there are none yet."""
        if self._keys is not None:
            return self._keys
        async with self._lock:
            if self._keys is None:
                if not self._may_fetch():
                    raise VerifierUnavailable("fal's webhook keys could not be fetched lately")
                await self._fetch()
            if self._keys is None:
                raise VerifierUnavailable("could not fetch fal's webhook keys")
            return self._keys

    async def refresh(self) -> bool:
        """Fetch the set again unless that was done under a minute ago; True if fetched."""
        async with self._lock:
            if not self._may_fetch():
                return False
            return await self._fetch()

    async def _fetch(self) -> bool:
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(
                timeout=self._timeout_s, transport=self._transport
            ) as client:
                response = await client.get(self.jwks_url)
            response.raise_for_status()
            keys = parse_jwks(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            # The keys we had (if any) stay: a failed refetch proves nothing about them.
            log.warning("could not fetch fal's webhook keys", url=self.jwks_url, error=str(exc))
            return False
        if not keys:
            log.warning("fal's JWKS holds no ED25519 key", url=self.jwks_url)
            return False
        self._keys = keys
        return True


def parse_fal(token: str, body: bytes) -> ProviderEvent:
    """fal's `{request_id, gateway_request_id, status, payload, error}` as a ProviderEvent."""
    delivery = _json_object(body)
    # request_id is the id of the queue API, which is what a submission is followed by;
    # gateway_request_id only names fal's last internal retry.
    run_id = _run_id(delivery.get("request_id"), "the delivery's request_id")
    status = delivery.get("status")
    state = _FAL_STATES.get(status) if isinstance(status, str) else None
    if state is None:
        raise MalformedDelivery(f"unknown fal status {status!r}")
    error = _error_text(delivery.get("error")) if state == "failed" else None
    if state == "failed" and error is None:
        error = _error_text(delivery.get("payload")) or "fal reported an error"
    return ProviderEvent(token=token, provider=FAL, run_id=run_id, state=state, error=error)


# -- both -----------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise MalformedDelivery("the body is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedDelivery("the body is not a JSON object")
    return value


def _run_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedDelivery(f"{what} is missing")
    if len(value) > RUN_ID_MAX_CHARS:
        raise MalformedDelivery(f"{what} is longer than {RUN_ID_MAX_CHARS} characters")
    return value


def _error_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:ERROR_MAX_CHARS]


@dataclass(frozen=True)
class VerifiedDelivery:
    event: ProviderEvent
    # What the signature covers, hashed: the same delivery twice has the same digest.
    digest: str
    # fal only: the account the delivery names (already checked when ours is known).
    fal_user_id: str | None = None


class ProviderWebhookVerifier:
    """Checks a delivery with the provider's scheme and reads it; keeps keys between calls."""

    def __init__(
        self,
        replicate_secret: ReplicateSigningSecret,
        fal_keys: FalKeySet,
        tolerance_s: int,
        fal_user_id: str | None = None,
    ) -> None:
        self.replicate_secret = replicate_secret
        self.fal_keys = fal_keys
        self.tolerance_s = tolerance_s
        self.fal_user_id = fal_user_id

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderWebhookVerifier:
        configured = settings.replicate_webhook_secret
        api_token = settings.replicate_api_token
        timeout_s = settings.provider_request_timeout_s
        return cls(
            ReplicateSigningSecret(
                configured=configured.get_secret_value() if configured else None,
                base_url=settings.replicate_base_url,
                api_token=api_token.get_secret_value() if api_token else None,
                timeout_s=timeout_s,
            ),
            FalKeySet(settings.fal_webhook_jwks_url, timeout_s=timeout_s),
            settings.provider_webhook_tolerance_s,
            fal_user_id=settings.fal_webhook_user_id,
        )

    def learn_fal_user(self, user_id: str) -> None:
        """Pin our fal user id once a delivery about a job of ours proved it."""
        if self.fal_user_id is None:
            log.info("learned our fal user id from a confirmed delivery")
            self.fal_user_id = user_id

    async def verify(
        self, provider: str, token: str, headers: Mapping[str, str], body: bytes
    ) -> VerifiedDelivery:
        """The event of an authentic delivery; NotAuthentic, MalformedDelivery or
        VerifierUnavailable otherwise."""
        if provider == REPLICATE:
            # Headers and timestamp first: junk must not cost a fetch of the secret.
            _replicate_signed(headers, body, self.tolerance_s, None)
            secret = await self.replicate_secret.get()
            digest = verify_replicate(secret, headers, body, tolerance_s=self.tolerance_s)
            return VerifiedDelivery(parse_replicate(token, body), digest)
        if provider == FAL:
            digest, user_id = await self._verify_fal(headers, body)
            return VerifiedDelivery(parse_fal(token, body), digest, fal_user_id=user_id)
        raise ValueError(f"no webhooks for provider {provider!r}")

    async def _verify_fal(self, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
        # Headers and timestamp first: junk must not cost a fetch of the keys.
        _fal_signed(headers, body, self.tolerance_s, None)
        tolerance_s, user_id = self.tolerance_s, self.fal_user_id
        try:
            keys = await self.fal_keys.current()
            return verify_fal(keys, headers, body, tolerance_s=tolerance_s, user_id=user_id)
        except SignatureMismatch:
            # fal may have rotated its keys since we fetched them.
            if not await self.fal_keys.refresh():
                raise
        keys = await self.fal_keys.current()
        return verify_fal(keys, headers, body, tolerance_s=tolerance_s, user_id=user_id)
