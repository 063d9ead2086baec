"""Webhook events: the payload, its HMAC-SHA256 signature, and which targets are allowed.

A receiver verifies an event by recomputing
    hex(HMAC_SHA256(secret, f"{timestamp}.{raw body}"))
and comparing it with the `sha256=` value of the signature header, and should reject
timestamps older than a few minutes (replays).

A target is resolved once, every address it resolves to must be public, and the delivery
then connects to that vetted address (never resolving the name again), so a name that
answers a public address to the check and a private one to the connection (DNS
rebinding) cannot reach the worker's network.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from core.egress import (
    EgressPolicy,
    EgressRefused,
    Resolver,
    VettedTarget,
    host_and_port,
    system_resolver,
    vet,
)
from core.settings import Settings
from domain.errors import Invalid

SIGNATURE_HEADER = "SoundFoundry-Signature"
TIMESTAMP_HEADER = "SoundFoundry-Timestamp"
EVENT_ID_HEADER = "SoundFoundry-Event-Id"
# Ports a webhook URL may name, besides WEBHOOK_ALLOWED_PORTS: internal services listen on
# many others, and a public web server needs no other.
DEFAULT_PORTS = frozenset({80, 443})


class WebhookTargetRejected(Invalid, ValueError):
    pass


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def check_url_shape(url: str) -> tuple[str, int]:
    """http(s) with a host; returns (host, port). No DNS here."""
    try:
        return host_and_port(url)
    except EgressRefused as exc:
        raise WebhookTargetRejected(f"webhook_url {exc}") from None


def webhook_policy(settings: Settings, resolve: Resolver = system_resolver) -> EgressPolicy:
    """Public addresses on 80, 443 and WEBHOOK_ALLOWED_PORTS; WEBHOOK_ALLOWED_HOSTS are
    exempt from both checks (the tests' loopback receivers)."""
    ports = DEFAULT_PORTS | set(settings.webhook_allowed_ports)
    return EgressPolicy.of(settings.webhook_allowed_hosts, ports, resolve)


async def vet_target(url: str, policy: EgressPolicy) -> VettedTarget:
    """Resolve the target once and refuse it unless every address is public and the
    port allowed. Messages never name the address a host resolved to."""
    check_url_shape(url)
    try:
        return await vet(url, policy)
    except EgressRefused as exc:
        raise WebhookTargetRejected(f"webhook {exc}") from None


async def check_target(url: str, policy: EgressPolicy) -> None:
    """The create-time check; deliveries vet the target again and connect to the result."""
    await vet_target(url, policy)
