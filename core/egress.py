"""Where the app may connect when a user or a provider names the address: the outgoing
address filter shared by webhook deliveries and provider audio downloads.

A URL is resolved once, every address it resolves to must be public (and its port one the
policy allows), and the request then connects to that vetted address, never resolving the
name again: a name that answers a public address to the check and a private one to the
connection (DNS rebinding) cannot reach the internal network. Redirects are followed by
hand, each hop vetted the same way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as strings.
Resolver = Callable[[str, int], Awaitable[list[str]]]

# What `is_global` lets through on Python 3.11 although these never lead to a public host
# by themselves: IPv4-compatible IPv6 (::a.b.c.d, including :: and ::1), NAT64's local-use
# prefix, deprecated site-local IPv6, multicast and 192.0.0.0/24 (IETF protocol use).
# And cloud hosts' own services on addresses that are global on paper: Azure's
# wireserver and IMDS proxy (168.63.129.16), AWS's IPv6 metadata endpoint (fd00:ec2::254
# is private anyway; listed so removing ULA from the checks cannot open it).
_ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(net)
    for net in (
        "::/96",
        "64:ff9b:1::/48",
        "fec0::/10",
        "ff00::/8",
        "192.0.0.0/24",
        "224.0.0.0/4",
        "168.63.129.16/32",
        "fd00:ec2::254/128",
    )
)
# NAT64's well-known prefix carries the IPv4 destination in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_REDIRECTS = 5


class EgressRefused(ValueError):
    """The URL may not be connected to. Messages never name the address a host resolved
    to: that would map the internal network for whoever chose the URL."""


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
class EgressPolicy:
    """`allowed_hosts` are exempt from the address and port checks (named explicitly: the
    tests' loopback receivers and fakes). `allowed_ports` None means any port."""

    allowed_hosts: frozenset[str] = frozenset()
    allowed_ports: frozenset[int] | None = None
    resolve: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def of(
        cls,
        allowed_hosts: Iterable[str] = (),
        allowed_ports: Iterable[int] | None = None,
        resolve: Resolver = system_resolver,
    ) -> EgressPolicy:
        return cls(
            frozenset(h.lower() for h in allowed_hosts),
            None if allowed_ports is None else frozenset(allowed_ports),
            resolve,
        )


@dataclass(frozen=True)
class VettedTarget:
    """A URL and the one address a request to it may connect to."""

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


def host_and_port(url: str) -> tuple[str, int]:
    """http(s) with a host and no credentials; returns (host, port). No DNS here."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise EgressRefused("must be an http or https URL")
    if not parts.hostname:
        raise EgressRefused("has no host")
    if parts.username or parts.password:
        raise EgressRefused("must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise EgressRefused("has an invalid port") from exc
    return parts.hostname, port


async def vet(url: str, policy: EgressPolicy) -> VettedTarget:
    """Resolve the URL's host once; refuse it unless every address is public and the port
    allowed (or the host is on the policy's list)."""
    host, port = host_and_port(url)
    try:
        answers = [
            ipaddress.ip_address(a.split("%", 1)[0]) for a in await policy.resolve(host, port)
        ]
    except (OSError, ValueError) as exc:
        raise EgressRefused(f"host {host!r} does not resolve") from exc
    if not answers:
        raise EgressRefused(f"host {host!r} does not resolve")
    if host.lower() not in policy.allowed_hosts:
        if not all(is_public_address(a) for a in answers):
            raise EgressRefused(f"host {host!r} resolves to a non-public address")
        if policy.allowed_ports is not None and port not in policy.allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(policy.allowed_ports))
            raise EgressRefused(f"port {port} is not allowed (allowed: {allowed})")
    return VettedTarget(url=url, host=host, port=port, address=str(answers[0]))


@asynccontextmanager
async def open_vetted(
    http: httpx.AsyncClient,
    method: str,
    url: str | VettedTarget,
    policy: EgressPolicy,
    *,
    headers: Mapping[str, str] | None = None,
    content: bytes | str | None = None,
    max_redirects: int = 0,
) -> AsyncIterator[httpx.Response]:
    """The response to `method url`, its body not read yet (stream it, or leave it).

    Each hop connects to its vetted address (`url` may be vetted already); up to
    `max_redirects` redirects are followed as GETs without a body, each vetted again. The
    client must not follow redirects itself.
    """
    target = url if isinstance(url, VettedTarget) else await vet(url, policy)
    for _ in range(max_redirects + 1):
        request = http.build_request(
            method,
            target.pinned_url,
            headers={**(headers or {}), "Host": target.host_header},
            content=content,
            # TLS names and verifies the original host, not the address.
            extensions={"sni_hostname": target.host},
        )
        response = await http.send(request, stream=True)
        location = response.headers.get("location")
        if not (response.is_redirect and location and max_redirects):
            try:
                yield response
            finally:
                await response.aclose()
            return
        await response.aclose()  # its body is never read
        method, content = "GET", None
        target = await vet(urljoin(target.url, location), policy)
    raise EgressRefused(f"more than {max_redirects} redirects")
