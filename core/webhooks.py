"""Webhook events: the payload, its HMAC-SHA256 signature, and which targets are allowed.

A receiver verifies an event by recomputing
    hex(HMAC_SHA256(secret, f"{timestamp}.{raw body}"))
and comparing it with the `sha256=` value of the signature header, and should reject
timestamps older than a few minutes (replays).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

SIGNATURE_HEADER = "SoundFoundry-Signature"
TIMESTAMP_HEADER = "SoundFoundry-Timestamp"
EVENT_ID_HEADER = "SoundFoundry-Event-Id"


class WebhookTargetRejected(ValueError):
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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookTargetRejected("webhook_url must be an http or https URL")
    if not parts.hostname:
        raise WebhookTargetRejected("webhook_url has no host")
    if parts.username or parts.password:
        raise WebhookTargetRejected("webhook_url must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookTargetRejected("webhook_url has an invalid port") from exc
    return parts.hostname, port


async def check_target(url: str, allowed_hosts: Iterable[str] = ()) -> None:
    """Refuse targets that resolve to loopback, private, link-local or reserved addresses.

    Checked when the track is created and again before every delivery, since DNS can
    change in between. `allowed_hosts` (WEBHOOK_ALLOWED_HOSTS) lets tests use loopback.
    """
    host, port = check_url_shape(url)
    if host.lower() in {h.lower() for h in allowed_hosts}:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookTargetRejected(f"webhook host {host!r} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise WebhookTargetRejected(
                f"webhook host {host!r} resolves to a non-public address ({address})"
            )
