"""Verifying provider webhooks without any service: keys made here, signatures by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from domain.webhooks.incoming import (
    FalKeySet,
    MalformedDelivery,
    NotAuthentic,
    NotOurAccount,
    ProviderWebhookVerifier,
    ReplicateSigningSecret,
    SignatureMismatch,
    VerifierUnavailable,
    parse_fal,
    parse_jwks,
    parse_replicate,
    verify_fal,
    verify_replicate,
    webhook_url,
)

pytestmark = pytest.mark.unit

TOLERANCE_S = 300
BODY = json.dumps({"id": "p-1", "status": "succeeded", "error": None}).encode()


# -- helpers ------------------------------------------------------------------------


def new_whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def replicate_headers(
    secret: str, body: bytes, *, timestamp: int | None = None, message_id: str = "msg_1"
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def fal_headers(
    key: Ed25519PrivateKey,
    body: bytes,
    *,
    timestamp: int | None = None,
    request_id: str = "r-1",
    user_id: str = "user-1",
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    message = "\n".join((request_id, user_id, ts, hashlib.sha256(body).hexdigest())).encode()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": ts,
        "X-Fal-Webhook-Signature": key.sign(message).hex(),
    }


def jwk(key: Ed25519PrivateKey) -> dict[str, str]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def serving(handler: Any) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        response: httpx.Response = handler(request)
        return response

    return httpx.MockTransport(record), seen


# -- Replicate (Standard Webhooks) ----------------------------------------------------


def test_a_replicate_signature_verifies() -> None:
    secret = new_whsec()
    verify_replicate(secret, replicate_headers(secret, BODY), BODY, tolerance_s=TOLERANCE_S)


def test_replicate_headers_are_case_insensitive_and_any_v1_entry_may_match() -> None:
    secret = new_whsec()
    good = replicate_headers(secret, BODY)
    headers = {
        "Webhook-Id": good["webhook-id"],
        "Webhook-Timestamp": good["webhook-timestamp"],
        # A rotated-out signature, an unknown scheme, then the current one.
        "Webhook-Signature": f"v1,{base64.b64encode(b'x' * 32).decode()} v2,abc "
        + good["webhook-signature"],
    }
    verify_replicate(secret, headers, BODY, tolerance_s=TOLERANCE_S)


def test_a_tampered_replicate_body_is_refused() -> None:
    secret = new_whsec()
    headers = replicate_headers(secret, BODY)
    tampered = BODY.replace(b"succeeded", b"failed")
    with pytest.raises(SignatureMismatch):
        verify_replicate(secret, headers, tampered, tolerance_s=TOLERANCE_S)
    # Even a byte of whitespace: the signature covers the raw body, not its JSON.
    with pytest.raises(SignatureMismatch):
        verify_replicate(secret, headers, BODY + b" ", tolerance_s=TOLERANCE_S)


def test_a_replicate_delivery_signed_with_another_secret_is_refused() -> None:
    headers = replicate_headers(new_whsec(), BODY)
    with pytest.raises(SignatureMismatch):
        verify_replicate(new_whsec(), headers, BODY, tolerance_s=TOLERANCE_S)


def test_a_changed_message_id_breaks_the_signature() -> None:
    secret = new_whsec()
    headers = {**replicate_headers(secret, BODY), "webhook-id": "msg_other"}
    with pytest.raises(SignatureMismatch):
        verify_replicate(secret, headers, BODY, tolerance_s=TOLERANCE_S)


@pytest.mark.parametrize("offset_s", [-310, 310, -86_400])
def test_replicate_timestamps_outside_the_tolerance_are_refused(offset_s: int) -> None:
    secret = new_whsec()
    headers = replicate_headers(secret, BODY, timestamp=int(time.time()) + offset_s)
    with pytest.raises(NotAuthentic, match="stale"):
        verify_replicate(secret, headers, BODY, tolerance_s=TOLERANCE_S)


def test_the_tolerance_is_ours_not_the_librarys_five_minutes() -> None:
    secret = new_whsec()
    headers = replicate_headers(secret, BODY, timestamp=int(time.time()) - 400)
    verify_replicate(secret, headers, BODY, tolerance_s=600)
    with pytest.raises(NotAuthentic, match="stale"):
        verify_replicate(secret, headers, BODY, tolerance_s=60)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_replicate_delivery_missing_a_header_is_unsigned(missing: str) -> None:
    secret = new_whsec()
    headers = replicate_headers(secret, BODY)
    del headers[missing]
    with pytest.raises(NotAuthentic, match=missing):
        verify_replicate(secret, headers, BODY, tolerance_s=TOLERANCE_S)


@pytest.mark.parametrize("timestamp", ["soon", "1e9", "-5", "\u0661\u0662\u0663", ""])
def test_a_replicate_timestamp_must_be_plain_seconds(timestamp: str) -> None:
    secret = new_whsec()
    headers = {**replicate_headers(secret, BODY), "webhook-timestamp": timestamp}
    with pytest.raises(NotAuthentic):
        verify_replicate(secret, headers, BODY, tolerance_s=TOLERANCE_S)


def test_garbage_in_the_replicate_signature_is_refused_not_an_error() -> None:
    secret = new_whsec()
    for garbage in ("v1,%%%", "v1", "nonsense", "v1,"):
        headers = {**replicate_headers(secret, BODY), "webhook-signature": garbage}
        with pytest.raises(NotAuthentic):
            verify_replicate(secret, headers, BODY, tolerance_s=TOLERANCE_S)


def test_a_non_utf8_replicate_body_is_refused() -> None:
    secret = new_whsec()
    body = b"\xff\xfe"
    with pytest.raises(NotAuthentic):
        verify_replicate(secret, replicate_headers(secret, body), body, tolerance_s=TOLERANCE_S)


# -- fal (ED25519 + JWKS) -------------------------------------------------------------

FAL_BODY = json.dumps({"request_id": "r-1", "status": "OK", "payload": {}}).encode()


def test_a_fal_signature_verifies_against_any_published_key() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = parse_jwks({"keys": [jwk(other), jwk(key)]})
    verify_fal(keys, fal_headers(key, FAL_BODY), FAL_BODY, tolerance_s=TOLERANCE_S)


def test_a_fal_delivery_signed_with_an_unpublished_key_is_refused() -> None:
    keys = parse_jwks({"keys": [jwk(Ed25519PrivateKey.generate())]})
    headers = fal_headers(Ed25519PrivateKey.generate(), FAL_BODY)
    with pytest.raises(SignatureMismatch):
        verify_fal(keys, headers, FAL_BODY, tolerance_s=TOLERANCE_S)


def test_a_tampered_fal_body_or_header_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    keys = parse_jwks({"keys": [jwk(key)]})
    headers = fal_headers(key, FAL_BODY)
    with pytest.raises(SignatureMismatch):
        verify_fal(keys, headers, FAL_BODY.replace(b"OK", b"ERROR"), tolerance_s=TOLERANCE_S)
    for name in ("X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id"):
        with pytest.raises(SignatureMismatch):
            verify_fal(keys, {**headers, name: "someone-else"}, FAL_BODY, tolerance_s=TOLERANCE_S)


def test_a_fal_delivery_for_another_fal_user_is_refused() -> None:
    """fal's keys sign every customer's deliveries: a genuine one for someone else's job
    must not reach our submissions."""
    key = Ed25519PrivateKey.generate()
    keys = parse_jwks({"keys": [jwk(key)]})
    theirs = fal_headers(key, FAL_BODY, user_id="someone-else")
    with pytest.raises(NotOurAccount):
        verify_fal(keys, theirs, FAL_BODY, tolerance_s=TOLERANCE_S, user_id="user-1")
    ours = fal_headers(key, FAL_BODY)
    _, user = verify_fal(keys, ours, FAL_BODY, tolerance_s=TOLERANCE_S, user_id="user-1")
    assert user == "user-1"


def test_a_delivery_has_one_digest_and_a_resigned_one_another() -> None:
    """What makes a replay recognisable: the same signed delivery hashes the same, even
    with extra signature entries added; a fresh signing (new timestamp) does not."""
    key = Ed25519PrivateKey.generate()
    keys = parse_jwks({"keys": [jwk(key)]})
    now = int(time.time())
    first, _ = verify_fal(keys, fal_headers(key, FAL_BODY, timestamp=now), FAL_BODY, tolerance_s=60)
    again, _ = verify_fal(keys, fal_headers(key, FAL_BODY, timestamp=now), FAL_BODY, tolerance_s=60)
    later = fal_headers(key, FAL_BODY, timestamp=now + 1)
    assert first == again != verify_fal(keys, later, FAL_BODY, tolerance_s=60)[0]

    secret = new_whsec()
    headers = replicate_headers(secret, BODY, timestamp=now)
    padded = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    digest = verify_replicate(secret, headers, BODY, tolerance_s=60)
    assert verify_replicate(secret, padded, BODY, tolerance_s=60) == digest


async def test_the_verifier_pins_our_fal_user_once_learned() -> None:
    key = Ed25519PrivateKey.generate()
    verifier, _ = _verifier({"keys": [jwk(key)]}, Clock())
    stranger = fal_headers(key, FAL_BODY, user_id="someone-else")
    delivery = await verifier.verify("fal", "tok", stranger, FAL_BODY)
    assert delivery.fal_user_id == "someone-else", "unpinned: the use case decides"
    verifier.learn_fal_user("user-1")
    verifier.learn_fal_user("someone-else")  # the first proof wins
    with pytest.raises(NotOurAccount):
        await verifier.verify("fal", "tok", stranger, FAL_BODY)
    await verifier.verify("fal", "tok", fal_headers(key, FAL_BODY), FAL_BODY)


def test_a_stale_fal_delivery_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    keys = parse_jwks({"keys": [jwk(key)]})
    headers = fal_headers(key, FAL_BODY, timestamp=int(time.time()) - 3600)
    with pytest.raises(NotAuthentic, match="stale"):
        verify_fal(keys, headers, FAL_BODY, tolerance_s=TOLERANCE_S)


@pytest.mark.parametrize("signature", ["zz" * 64, "ab" * 10, ""])
def test_a_fal_signature_must_be_64_bytes_of_hex(signature: str) -> None:
    key = Ed25519PrivateKey.generate()
    headers = {**fal_headers(key, FAL_BODY), "X-Fal-Webhook-Signature": signature}
    with pytest.raises(NotAuthentic):
        verify_fal(parse_jwks({"keys": [jwk(key)]}), headers, FAL_BODY, tolerance_s=TOLERANCE_S)


def test_parse_jwks_keeps_the_ed25519_keys_it_can_read() -> None:
    key = Ed25519PrivateKey.generate()
    document = {
        "keys": [
            {"kty": "EC", "crv": "P-256", "x": "abc", "y": "def"},
            {"kty": "OKP", "crv": "Ed25519", "x": "not base64url!"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},  # too short for a key
            "junk",
            jwk(key),
        ]
    }
    keys = parse_jwks(document)
    assert len(keys) == 1
    verify_fal(keys, fal_headers(key, FAL_BODY), FAL_BODY, tolerance_s=TOLERANCE_S)
    with pytest.raises(ValueError):
        parse_jwks({"no": "keys"})


# -- reading what a delivery says -----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("canceled", "cancelled"),
        ("processing", "running"),
    ],
)
def test_replicate_statuses(status: str, state: str) -> None:
    body = json.dumps({"id": "p-9", "status": status, "error": None}).encode()
    event = parse_replicate("tok", body)
    assert (event.token, event.provider, event.run_id, event.state) == (
        "tok",
        "replicate",
        "p-9",
        state,
    )


def test_a_replicate_failure_carries_its_error() -> None:
    body = json.dumps({"id": "p-9", "status": "failed", "error": "CUDA out of memory"}).encode()
    assert parse_replicate("tok", body).error == "CUDA out of memory"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"status": "succeeded"}',
        b'{"id": "p", "status": "exploded"}',
        json.dumps({"id": "p" * 129, "status": "succeeded"}).encode(),  # over the column
    ],
)
def test_unreadable_replicate_bodies(body: bytes) -> None:
    with pytest.raises(MalformedDelivery):
        parse_replicate("tok", body)


def test_fal_statuses() -> None:
    ok = parse_fal("tok", FAL_BODY)
    assert (ok.provider, ok.run_id, ok.state, ok.error) == ("fal", "r-1", "succeeded", None)
    failed = parse_fal(
        "tok", json.dumps({"request_id": "r-2", "status": "ERROR", "error": "boom"}).encode()
    )
    assert (failed.state, failed.error) == ("failed", "boom")
    no_message = json.dumps(
        {"request_id": "r-3", "status": "ERROR", "payload": {"detail": "bad input"}}
    ).encode()
    assert "bad input" in (parse_fal("tok", no_message).error or "")
    with pytest.raises(MalformedDelivery):
        parse_fal("tok", b'{"status": "OK"}')


def test_webhook_urls_carry_the_token() -> None:
    assert (
        webhook_url("https://api.example.com/", "fal", "a-b_c")
        == "https://api.example.com/api/provider-webhooks/fal?token=a-b_c"
    )
    with pytest.raises(ValueError):
        webhook_url("https://api.example.com", "synth", "t")


# -- keys and secrets fetched and kept -----------------------------------------------


async def test_the_replicate_secret_is_fetched_once_with_the_api_token() -> None:
    secret = new_whsec()
    transport, seen = serving(lambda request: httpx.Response(200, json={"key": secret}))
    holder = ReplicateSigningSecret(
        configured=None, base_url="https://r.test/", api_token="r8_tok", transport=transport
    )
    assert await holder.get() == secret
    assert await holder.get() == secret
    assert len(seen) == 1
    assert str(seen[0].url) == "https://r.test/v1/webhooks/default/secret"
    assert seen[0].headers["authorization"] == "Bearer r8_tok"


async def test_a_configured_replicate_secret_is_never_fetched() -> None:
    transport, seen = serving(lambda request: httpx.Response(500))
    holder = ReplicateSigningSecret(
        configured="whsec_abc", base_url="https://r.test", api_token="t", transport=transport
    )
    assert await holder.get() == "whsec_abc"
    assert seen == []


async def test_a_failed_secret_fetch_is_not_kept() -> None:
    answers = iter([httpx.Response(503), httpx.Response(200, json={"key": "whsec_xyz"})])
    transport, seen = serving(lambda request: next(answers))
    holder = ReplicateSigningSecret(
        configured=None, base_url="https://r.test", api_token="t", transport=transport
    )
    with pytest.raises(VerifierUnavailable):
        await holder.get()
    assert await holder.get() == "whsec_xyz"
    assert len(seen) == 2


async def test_no_replicate_secret_without_a_token() -> None:
    holder = ReplicateSigningSecret(configured=None, base_url="https://r.test", api_token=None)
    with pytest.raises(VerifierUnavailable, match="REPLICATE_WEBHOOK_SECRET"):
        await holder.get()


def _verifier(
    jwks: dict[str, Any], clock: Clock
) -> tuple[ProviderWebhookVerifier, list[httpx.Request]]:
    transport, seen = serving(lambda request: httpx.Response(200, json=jwks))
    keys = FalKeySet("https://fal.test/jwks.json", transport=transport, clock=clock)
    unused = ReplicateSigningSecret(
        configured=new_whsec(), base_url="https://r.test", api_token=None
    )
    return ProviderWebhookVerifier(unused, keys, TOLERANCE_S), seen


async def test_fal_keys_are_fetched_again_on_a_miss_at_most_once_a_minute() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    jwks: dict[str, Any] = {"keys": [jwk(old)]}
    clock = Clock()
    verifier, seen = _verifier(jwks, clock)

    await verifier.verify("fal", "tok", fal_headers(old, FAL_BODY), FAL_BODY)
    await verifier.verify("fal", "tok", fal_headers(old, FAL_BODY), FAL_BODY)
    assert len(seen) == 1, "kept between deliveries"

    # fal rotates: the first delivery signed with the new key makes us look again...
    clock.now += 61
    jwks["keys"] = [jwk(new)]
    await verifier.verify("fal", "tok", fal_headers(new, FAL_BODY), FAL_BODY)
    assert len(seen) == 2

    # ...but forgeries right after cannot make us fetch again within the minute.
    for _ in range(3):
        with pytest.raises(SignatureMismatch):
            forged = fal_headers(Ed25519PrivateKey.generate(), FAL_BODY)
            await verifier.verify("fal", "tok", forged, FAL_BODY)
    assert len(seen) == 2
    clock.now += 61
    with pytest.raises(SignatureMismatch):
        forged = fal_headers(Ed25519PrivateKey.generate(), FAL_BODY)
        await verifier.verify("fal", "tok", forged, FAL_BODY)
    assert len(seen) == 3


async def test_junk_costs_no_key_fetch() -> None:
    verifier, seen = _verifier({"keys": []}, Clock())
    with pytest.raises(NotAuthentic, match="missing"):
        await verifier.verify("fal", "tok", {}, FAL_BODY)
    stale = fal_headers(Ed25519PrivateKey.generate(), FAL_BODY, timestamp=1_000_000)
    with pytest.raises(NotAuthentic, match="stale"):
        await verifier.verify("fal", "tok", stale, FAL_BODY)
    assert seen == []

    transport, asked = serving(lambda request: httpx.Response(200, json={"key": new_whsec()}))
    replicate = ReplicateSigningSecret(
        configured=None, base_url="https://r.test", api_token="t", transport=transport
    )
    verifier = ProviderWebhookVerifier(replicate, verifier.fal_keys, TOLERANCE_S)
    with pytest.raises(NotAuthentic, match="missing"):
        await verifier.verify("replicate", "tok", {}, BODY)
    assert asked == []


async def test_an_unreachable_jwks_is_a_retry_later() -> None:
    transport, _ = serving(lambda request: httpx.Response(502))
    keys = FalKeySet("https://fal.test/jwks.json", transport=transport, clock=Clock())
    unused = ReplicateSigningSecret(
        configured=new_whsec(), base_url="https://r.test", api_token=None
    )
    verifier = ProviderWebhookVerifier(unused, keys, TOLERANCE_S)
    key = Ed25519PrivateKey.generate()
    with pytest.raises(VerifierUnavailable):
        await verifier.verify("fal", "tok", fal_headers(key, FAL_BODY), FAL_BODY)
