"""`CappedTransport`: what a server we do not run may answer, and what it costs us to read.

Against a real loopback server where the byte count matters (an endless body, a declared
length), and httpx's own MockTransport where only the bytes on the wire do (compression).
"""

from __future__ import annotations

import asyncio
import gzip
import zlib

import httpx
import pytest

from core.capped import CappedTransport, ResponseTooLarge, capped
from tests.fakes.hostile_http import CHUNK, Answer, hostile_server

pytestmark = pytest.mark.unit

CAP = 64 * 1024


async def test_an_endless_body_stops_just_past_the_cap() -> None:
    async with hostile_server({"/": Answer(endless=True)}) as server:
        async with httpx.AsyncClient(transport=capped(CAP)) as client:
            with pytest.raises(ResponseTooLarge, match="PROVIDER_RESPONSE_MAX_BYTES"):
                await client.get(f"{server.url}/")
        await asyncio.wait_for(server.hung_up.wait(), 10)
    # What socket buffers took before we hung up, not the 512 MiB on offer.
    assert server.body_bytes_sent < 32 * CHUNK


async def test_a_declared_length_over_the_cap_is_refused_before_the_body() -> None:
    answers = {"/": Answer(body=b"{}" + b" " * (4 * CAP))}
    async with hostile_server(answers) as server, httpx.AsyncClient(transport=capped(CAP)) as http:
        with pytest.raises(ResponseTooLarge):
            await http.get(f"{server.url}/")


async def test_answers_within_the_cap_pass_untouched() -> None:
    body = b'{"ok": true}' + b" " * (CAP - 12)
    answers = {"/": Answer(body=body, chunked=True)}
    async with hostile_server(answers) as server, httpx.AsyncClient(transport=capped(CAP)) as http:
        response = await http.get(f"{server.url}/")
    assert response.json() == {"ok": True} and len(response.content) == CAP


def _serving(body: bytes, encoding: str, seen: list[httpx.Request]) -> CappedTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Content-Encoding": encoding}, content=body)

    return CappedTransport(httpx.MockTransport(answer), CAP)


async def test_a_compression_bomb_is_counted_as_it_inflates() -> None:
    """A few KB on the wire that inflate to 64 MiB: refused at the cap, never inflated
    whole (and no compression is asked for in the first place)."""
    seen: list[httpx.Request] = []
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    assert len(bomb) < CAP
    async with httpx.AsyncClient(transport=_serving(bomb, "gzip", seen)) as client:
        with pytest.raises(ResponseTooLarge):
            await client.get("http://provider.test/")
    assert seen[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_small_compressed_answer_is_read_plain(encoding: str) -> None:
    plain = b'{"status": "IN_QUEUE"}'
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    async with httpx.AsyncClient(transport=_serving(packed, encoding, [])) as client:
        response = await client.get("http://provider.test/")
    assert response.json() == {"status": "IN_QUEUE"}
    assert "content-encoding" not in response.headers


async def test_an_encoding_not_asked_for_is_refused() -> None:
    async with httpx.AsyncClient(transport=_serving(b"\x00" * 16, "br", [])) as client:
        with pytest.raises(httpx.DecodingError, match="br-encoded"):
            await client.get("http://provider.test/")


async def test_the_default_pool_goes_through_the_environments_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a plain httpx client would: deployments that reach providers through a proxy
    keep doing so once answers are capped."""
    answers = {"http://provider.test/status": Answer(body=b'{"ok": true}')}
    async with hostile_server(answers) as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with httpx.AsyncClient(transport=capped(CAP)) as http:
            response = await http.get("http://provider.test/status")
    assert response.json() == {"ok": True}
    assert proxy.requests == ["http://provider.test/status"]
