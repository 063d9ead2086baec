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

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from domain.errors import Invalid

SIGNATURE_HEADER = "SoundFoundry-Signature"
TIMESTAMP_HEADER = "SoundFoundry-Timestamp"
EVENT_ID_HEADER = "SoundFoundry-Event-Id"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as strings.
Resolver = Callable[[str, int], Awaitable[list[str]]]

# What `is_global` lets through on Python 3.11 although these never lead to a public host
# by themselves: IPv4-compatible IPv6 (::a.b.c.d, including :: and ::1), NAT64's local-use
# prefix, deprecated site-local IPv6, multicast and 192.0.0.0/24 (IETF protocol use).
_ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(net)
    for net in ("::/96", "64:ff9b:1::/48", "fec0::/10", "ff00::/8", "192.0.0.0/24", "224.0.0.0/4")
)
# NAT64's well-known prefix carries the IPv4 destination in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


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


def is_public_address(address: IPAddress) -> bool:
    """True only for an address that reaches a public host, looking inside IPv6 forms
    that carry an IPv4 destination (mapped, NAT64, 6to4; Teredo is refused outright)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and not is_public_address(address.sixtofour):
            return False
        if address.teredo is not None:
            return False
    if any(address in network for network in _ALWAYS_REFUSED):
        return False
    return address.is_global


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class VettedTarget:
    """A webhook URL and the one address a delivery may connect to."""

    url: str
    host: str
    port: int
    address: str

    @property
    def pinned_url(self) -> str:
        """The URL with its host replaced by the vetted address (the Host header and TLS
        server name are set to the original host by the caller)."""
        parts = urlsplit(self.url)
        ip = ipaddress.ip_address(self.address)
        netloc = f"[{ip}]" if ip.version == 6 else str(ip)
        return urlunsplit(parts._replace(netloc=f"{netloc}:{self.port}"))

    @property
    def host_header(self) -> str:
        parts = urlsplit(self.url)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if parts.port is None else f"{host}:{parts.port}"


async def vet_target(
    url: str, allowed_hosts: Iterable[str] = (), resolve: Resolver = system_resolver
) -> VettedTarget:
    """Resolve the target once and refuse it unless every address is public.

    `allowed_hosts` (WEBHOOK_ALLOWED_HOSTS) lets tests use loopback receivers. Messages
    never name the address a host resolved to: that would map the internal network.
    """
    host, port = check_url_shape(url)
    try:
        answers = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await resolve(host, port)]
    except (OSError, ValueError) as exc:
        raise WebhookTargetRejected(f"webhook host {host!r} does not resolve") from exc
    if not answers:
        raise WebhookTargetRejected(f"webhook host {host!r} does not resolve")
    exempt = host.lower() in {h.lower() for h in allowed_hosts}
    if not exempt and not all(is_public_address(a) for a in answers):
        raise WebhookTargetRejected(f"webhook host {host!r} resolves to a non-public address")
    return VettedTarget(url=url, host=host, port=port, address=str(answers[0]))


async def check_target(
    url: str, allowed_hosts: Iterable[str] = (), resolve: Resolver = system_resolver
) -> None:
    """The create-time check; deliveries vet the target again and connect to the result."""
    await vet_target(url, allowed_hosts, resolve)
