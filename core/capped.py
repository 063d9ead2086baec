"""A bound on every response body read from a server we do not run (a provider's API,
its published keys): an httpx transport that refuses an answer longer than a cap.

Client libraries (fal-client, replicate) read whole bodies into memory; a server that
answers with gigabytes, or never stops, would take the worker with it. Wrapping their
transport bounds them without touching their code. The cap counts the bytes the caller
would get: the request asks for no compression, and an answer compressed anyway (gzip or
deflate) is inflated here, counted as it inflates, and handed on plain.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import AsyncIterator

import httpx

DEFAULT_RESPONSE_MAX_BYTES = 4 * 1024 * 1024
_SETTING = "PROVIDER_RESPONSE_MAX_BYTES"
# zlib's window bits: 32 + 15 reads a zlib or a gzip header, whichever comes.
_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS


class ResponseTooLarge(httpx.TransportError):
    """The answer's body is longer than the cap (declared or counted).

    A transport error on purpose: the request was sent and its answer cannot be read, so
    callers treat it like a cut connection: a submit's answer is lost (resolved by the
    pay-once ledger, never re-sent), any other call failed and may be tried again.
    """


def _too_large(max_bytes: int, request: httpx.Request) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"the answer is larger than {max_bytes} bytes ({_SETTING})", request=request
    )


class _CappedStream(httpx.AsyncByteStream):
    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        max_bytes: int,
        request: httpx.Request,
        inflate: bool,
    ) -> None:
        self._inner = inner
        self._max_bytes = max_bytes
        self._request = request
        self._inflater = zlib.decompressobj(_ZLIB_OR_GZIP) if inflate else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            if self._inflater is not None:
                # At most one byte past what is left: a small chunk may inflate to
                # gigabytes, and must not get the chance to.
                try:
                    chunk = self._inflater.decompress(chunk, self._max_bytes - seen + 1)
                except zlib.error:
                    raise httpx.DecodingError(
                        "the compressed answer is corrupt", request=self._request
                    ) from None
            seen += len(chunk)
            if seen > self._max_bytes:
                raise _too_large(self._max_bytes, self._request)
            yield chunk
        if self._inflater is not None and (rest := self._inflater.flush()):
            if seen + len(rest) > self._max_bytes:
                raise _too_large(self._max_bytes, self._request)
            yield rest

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedTransport(httpx.AsyncBaseTransport):
    """Wraps `inner`; answers whose body exceeds `max_bytes` raise `ResponseTooLarge`:
    at once when Content-Length says so, else as soon as the count passes the cap."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, max_bytes: int = DEFAULT_RESPONSE_MAX_BYTES
    ) -> None:
        self.inner = inner
        self.max_bytes = max_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = "identity"
        response = await self.inner.handle_async_request(request)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            await response.aclose()
            raise httpx.DecodingError(
                f"the answer is {encoding}-encoded, which was not asked for", request=request
            )
        headers = response.headers
        inflate = encoding != "identity"
        if inflate:
            # Handed on inflated, so neither header describes the body any more.
            headers = headers.copy()
            del headers["content-encoding"]
            headers.pop("content-length", None)
        elif _declared_length(response) > self.max_bytes:
            await response.aclose()
            raise _too_large(self.max_bytes, request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=headers,
            stream=_CappedStream(response.stream, self.max_bytes, request, inflate),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def _declared_length(response: httpx.Response) -> int:
    try:
        return int(response.headers.get("content-length") or 0)
    except ValueError:
        return 0


class _PoolTransport(httpx.AsyncBaseTransport):
    """A connection pool that honours the environment's proxy settings (HTTPS_PROXY,
    NO_PROXY) as a plain `httpx.AsyncClient` does; a client handed a transport directly
    ignores them. The outer client still sets timeouts and headers."""

    def __init__(self, verify: ssl.SSLContext | bool) -> None:
        self._client = httpx.AsyncClient(verify=verify, follow_redirects=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._client.send(request, stream=True)

    async def aclose(self) -> None:
        await self._client.aclose()


def capped(
    max_bytes: int,
    inner: httpx.AsyncBaseTransport | None = None,
    *,
    verify: ssl.SSLContext | bool = True,
) -> CappedTransport:
    """`inner` (else a connection pool verifying TLS with `verify`) with its answers
    capped at `max_bytes`."""
    return CappedTransport(inner or _PoolTransport(verify), max_bytes)
