"""Why a connection to Temporal failed, in one sentence an operator can act on.

The SDK reports a failed connection as a gRPC status or as the Rust core's transport
error, whose text names the TLS alert or the certificate check that failed. `explain`
reads those and names the cause and the setting that fixes it; what it does not
recognise it reports by its first line. Never a traceback, never a key: the sentences
quote only the address, the namespace and the names of variables.
"""

from __future__ import annotations

from collections.abc import Iterator

from temporalio.service import RPCError, RPCStatusCode

from core.temporal_config import TemporalConfigError, TemporalConnection


class TemporalUnavailable(Exception):
    """Temporal cannot be used as configured; str() is the one-sentence cause."""


CLIENT_CERT_VARS = "TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH"

# Substrings of the transport error (rustls, hyper, tonic) -> the cause, checked in order.
_TRANSPORT_CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("certificaterequired", "certificate required"),
        "Temporal at {address} requires a client certificate: set " + CLIENT_CERT_VARS,
    ),
    (
        ("unknownca", "unknown ca", "badcertificate", "bad certificate", "decrypterror"),
        "Temporal at {address} rejected our client certificate (not issued by a CA it trusts):"
        " check " + CLIENT_CERT_VARS,
    ),
    (
        ("certificateexpired", "certificate expired", "invalidcertificate(expired"),
        "a certificate between us and Temporal at {address} has expired",
    ),
    (
        ("unknownissuer", "unknown issuer", "invalid peer certificate: badsignature"),
        "the certificate Temporal at {address} presents is not signed by a CA we trust: set"
        " TEMPORAL_TLS_SERVER_CA_CERT_PATH to the CA that issued it",
    ),
    (
        ("notvalidforname", "not valid for name", "notvalidforcontext"),
        "the certificate Temporal at {address} presents is not issued for that host name:"
        " set TEMPORAL_TLS_SERVER_NAME to the name it carries",
    ),
    (
        ("invalidcontenttype", "corrupt message", "wrong version number", "invalidmessage"),
        "Temporal at {address} does not speak TLS: unset TEMPORAL_TLS and the TEMPORAL_TLS_*"
        " certificate settings (or TEMPORAL_TLS=false with an API key), or use its TLS port",
    ),
    (
        ("connection refused",),
        "nothing accepts connections at {address}: is Temporal running there (TEMPORAL_ADDRESS)?",
    ),
    (
        ("dns error", "failed to lookup", "name or service not known"),
        "the host of {address} does not resolve (TEMPORAL_ADDRESS)",
    ),
)
# The server dropped the connection. To a plaintext client that means a TLS listener (or a
# TLS record the HTTP/2 framing cannot parse). Over TLS 1.3 a server refuses a client
# certificate after the handshake, so the client often sees a dropped or cancelled stream
# instead of the alert naming why.
_DROPPED = (
    "operation was canceled",
    "connection reset",
    "broken pipe",
    "h2 protocol error",
    "frame with invalid size",
    "http2 error",
    "connection closed",
    "unexpected eof",
    "tls handshake eof",
)


def explain(error: BaseException, connection: TemporalConnection) -> str:
    """One sentence: the likely cause of `error` and the setting that fixes it."""
    address, namespace = connection.address, connection.namespace
    for link in _chain(error):
        if isinstance(link, TemporalUnavailable | TemporalConfigError):
            return str(link)
        if isinstance(link, RPCError):
            sentence = _rpc_cause(link, connection)
            if sentence:
                return sentence
    text = " ".join(str(link) for link in _chain(error)).lower()
    # Refused during the connect call itself (the SDK wraps the status in a RuntimeError):
    # the server could not map our token to an identity at all.
    if "code: permissiondenied" in text or "code: unauthenticated" in text:
        return _credentials_refused(connection)
    for needles, sentence in _TRANSPORT_CAUSES:
        if any(needle in text for needle in needles):
            return sentence.format(address=address, namespace=namespace)
    dropped = any(needle in text for needle in _DROPPED)
    if dropped and not connection.tls:
        return (
            f"Temporal at {address} closed the connection: it most likely requires TLS; set"
            f" TEMPORAL_TLS=true and TEMPORAL_TLS_SERVER_CA_CERT_PATH (and, for mTLS,"
            f" {CLIENT_CERT_VARS})"
        )
    if dropped and not connection.mutual_tls:
        return (
            f"Temporal at {address} requires a client certificate: set {CLIENT_CERT_VARS}"
            " (it closed the connection after the TLS handshake)"
        )
    if dropped:
        return (
            f"Temporal at {address} rejected our client certificate: check {CLIENT_CERT_VARS}"
            " and the CA that issued it (it closed the connection after the TLS handshake)"
        )
    if "timeout" in text or "deadline" in text or "timed out" in text:
        return f"Temporal at {address} did not answer in time (TEMPORAL_ADDRESS)"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return f"Temporal at {address} could not be used: {first}"


def _rpc_cause(error: RPCError, connection: TemporalConnection) -> str | None:
    address, namespace = connection.address, connection.namespace
    if error.status is RPCStatusCode.UNAUTHENTICATED:
        return _credentials_refused(connection)
    if error.status is RPCStatusCode.PERMISSION_DENIED:
        what = "the API key (TEMPORAL_API_KEY)" if connection.api_key else "our client identity"
        return (
            f"Temporal at {address} refused access to namespace {namespace}: {what} is not"
            " valid there or has no rights on that namespace"
        )
    if error.status is RPCStatusCode.NOT_FOUND and "namespace" in error.message.lower():
        return (
            f"namespace {namespace} does not exist on Temporal at {address}: set"
            f" TEMPORAL_NAMESPACE, or create it (`temporal operator namespace create"
            f" --namespace {namespace}`)"
        )
    return None


def _credentials_refused(connection: TemporalConnection) -> str:
    if connection.api_key:
        return (
            f"Temporal at {connection.address} rejected our API key (TEMPORAL_API_KEY): it is"
            " wrong, expired or revoked"
        )
    return (
        f"Temporal at {connection.address} refused our client identity: it needs credentials"
        " (TEMPORAL_API_KEY, or a client certificate it accepts)"
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__
