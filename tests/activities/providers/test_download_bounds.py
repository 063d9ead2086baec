"""A provider's audio download is bounded in size and in where it may lead.

The server is the worst a CDN (or whoever answers for it) could be: a body that never
ends, a Content-Length of gigabytes, redirects to loopback or the private network. Each
attempt must fail quickly with a clear error, take no more than the cap, and leave no
file behind; a redirect to a non-public address must never be connected to.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from activities.providers._http import DownloadRules, stream_audio
from activities.providers.base import ProviderError
from core.contracts import ErrorCode
from core.egress import EgressPolicy
from tests.fakes.hostile_http import CHUNK, Answer, hostile_server

CAP = 4 * 1024 * 1024
# The fake's host, named: loopback is refused unless listed, and nothing else is listed.
RULES = DownloadRules(max_bytes=CAP, egress=EgressPolicy.of(["127.0.0.1"]))
WAV = {"Content-Type": "audio/wav"}
SMALL = b"RIFF" + b"\0" * 1020


def no_beat(_: float) -> None:
    pass


async def download(url: str, dest: Path, rules: DownloadRules = RULES) -> None:
    await stream_audio(url, dest, no_beat, label="fal", timeout_s=5, rules=rules)


def nothing_left(folder: Path) -> bool:
    return list(folder.iterdir()) == []


async def test_an_endless_body_stops_at_the_cap(tmp_path: Path) -> None:
    async with hostile_server({"/a.wav": Answer(headers=WAV, endless=True)}) as server:
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await download(f"{server.url}/a.wav", tmp_path / "a.wav")
        assert time.monotonic() - started < 10
        assert caught.value.code is ErrorCode.BAD_AUDIO
        assert "PROVIDER_DOWNLOAD_MAX_BYTES" in caught.value.message
        await server.hung_up.wait()
    # What the client took: the cap, and what socket buffers held when it hung up.
    assert server.body_bytes_sent < CAP + 16 * CHUNK
    assert nothing_left(tmp_path)


async def test_a_declared_length_over_the_cap_is_refused_before_the_body(
    tmp_path: Path,
) -> None:
    huge = {**WAV, "Content-Length": str(50 * 1024**3)}
    async with hostile_server({"/a.wav": Answer(headers=huge, body=b"")}) as server:
        with pytest.raises(ProviderError, match="larger than"):
            await download(f"{server.url}/a.wav", tmp_path / "a.wav")
    assert nothing_left(tmp_path)


@pytest.mark.parametrize(
    "location",
    [
        "http://localhost:{port}/b.wav",  # loopback by another name: not on the list
        "http://[::1]:{port}/b.wav",
        "http://10.0.0.1/b.wav",  # never answers: a connection attempt would hang
        "http://169.254.169.254/latest/meta-data/",
        "http://168.63.129.16/machine",  # Azure's wireserver: global on paper
    ],
)
async def test_a_redirect_to_a_non_public_address_is_never_followed(
    tmp_path: Path, location: str
) -> None:
    async with hostile_server({"/b.wav": Answer(headers=WAV, body=SMALL)}) as target:
        redirect = Answer(302, {"Location": location.format(port=target.port)})
        async with hostile_server({"/a.wav": redirect}) as server:
            started = time.monotonic()
            with pytest.raises(ProviderError) as caught:
                await download(f"{server.url}/a.wav", tmp_path / "a.wav")
            assert time.monotonic() - started < 3, "it tried to connect"
    assert caught.value.code is ErrorCode.BAD_AUDIO
    assert "non-public address" in caught.value.message
    assert target.connections == 0
    assert nothing_left(tmp_path)


async def test_redirects_within_the_rules_are_followed_each_vetted(tmp_path: Path) -> None:
    async with hostile_server({"/b.wav": Answer(headers=WAV, body=SMALL)}) as target:
        hops = {
            "/a.wav": Answer(302, {"Location": f"{target.url}/b.wav"}),
        }
        async with hostile_server(hops) as server:
            await download(f"{server.url}/a.wav", tmp_path / "a.wav")
    assert (tmp_path / "a.wav").read_bytes() == SMALL


async def test_a_redirect_loop_ends(tmp_path: Path) -> None:
    async with hostile_server({}) as server:
        server.answers["/a.wav"] = Answer(302, {"Location": f"{server.url}/a.wav"})
        with pytest.raises(ProviderError, match="redirects"):
            await download(f"{server.url}/a.wav", tmp_path / "a.wav")
        assert server.requests == ["/a.wav"] * 6  # the first request and five redirects
    assert nothing_left(tmp_path)


async def test_loopback_is_refused_unless_named(tmp_path: Path) -> None:
    async with hostile_server({"/a.wav": Answer(headers=WAV, body=SMALL)}) as server:
        with pytest.raises(ProviderError, match="non-public address"):
            await download(f"{server.url}/a.wav", tmp_path / "a.wav", DownloadRules())
        assert server.connections == 0
