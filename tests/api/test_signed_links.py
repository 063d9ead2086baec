"""Signed links: a signature is valid for one purpose and one exact set of parameters.

A WAV link's signature opens no /files object and a /files signature no WAV download,
and nothing a /files link carries (key, expiry, download name, `inline`) can be added,
dropped or changed without the signature failing.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from api.downloads import wav_link_valid
from core.signing import FILES, WAV, LinkSigner
from core.storage import LocalStorage
from tests.conftest import Stack

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'
SECRET = "test-secret-key-for-signing-links"  # tests.conftest.base_settings


def test_one_purpose_signature_fails_on_another() -> None:
    signer = LinkSigner(SECRET)
    expires = int(time.time()) + 60
    fields = ("tracks/u/t.flac", "", "")
    for made_for, tried_on in ((WAV, FILES), (FILES, WAV)):
        signature = signer.sign(made_for, expires, *fields)
        assert signer.verify(made_for, signature, expires, *fields)
        assert not signer.verify(tried_on, signature, expires, *fields)
    # Fields cannot be shifted across each other's boundaries.
    joined = signer.sign(FILES, expires, "a\nb", "")
    assert not signer.verify(FILES, joined, expires, "a", "b")
    # And another secret signs nothing of ours.
    assert not LinkSigner(SECRET + "x").verify(FILES, joined, expires, "a\nb", "")


async def file_link(stack: Stack, key: str, **kwargs: object) -> httpx.URL:
    await stack.storage.put_bytes(key, SVG, "image/svg+xml")
    return httpx.URL(await stack.storage.signed_url(key, 60, **kwargs))  # type: ignore[arg-type]


async def get(stack: Stack, url: httpx.URL, **params: str | None) -> httpx.Response:
    query = {k: v for k, v in {**url.params, **params}.items() if v is not None}
    return await stack.http.get(url.path, params=query)


async def test_a_wav_signature_opens_no_file_and_a_file_signature_no_wav(
    embedded_stack: Stack,
) -> None:
    storage = embedded_stack.storage
    assert isinstance(storage, LocalStorage)
    signer = LinkSigner(embedded_stack.settings.secret_key.get_secret_value())
    expires = int(time.time()) + 60
    key = "covers/u/cover.svg"
    url = await file_link(embedded_stack, key)
    assert (await get(embedded_stack, url)).status_code == 200

    # The same fields the /files route checks, signed for WAV links: refused.
    wav_signed = signer.sign(WAV, expires, key, "", "")
    refused = await get(embedded_stack, url, expires=str(expires), sig=wav_signed)
    assert refused.status_code == 403

    # A /files signature over the WAV link's fields: refused (403), where the WAV link's
    # own signature gets past the check (404: no such track).
    track_id = uuid.uuid4()
    path = f"/downloads/{track_id}.wav"
    for sig, status in (
        (signer.sign(FILES, expires, str(track_id)), 403),
        (signer.sign(WAV, expires, str(track_id)), 404),
    ):
        response = await embedded_stack.http.get(path, params={"expires": expires, "sig": sig})
        assert response.status_code == status
    assert wav_link_valid(
        embedded_stack.settings, track_id, expires, signer.sign(WAV, expires, str(track_id))
    )


@pytest.mark.parametrize(
    ("signed_with", "tampered"),
    [
        ({}, {"inline": "true"}),  # an attachment turned into a document
        ({"inline": True}, {"inline": None}),
        ({"inline": True}, {"inline": "false"}),
        ({}, {"name": "invoice.html"}),  # a download name added
        ({"download_name": "cover.svg"}, {"name": "cover.html"}),
        ({"download_name": "cover.svg"}, {"name": None}),
    ],
)
async def test_name_and_inline_are_covered_by_the_signature(
    embedded_stack: Stack, signed_with: dict[str, object], tampered: dict[str, str | None]
) -> None:
    url = await file_link(embedded_stack, "covers/u/tamper.svg", **signed_with)
    as_signed = await get(embedded_stack, url)
    assert as_signed.status_code == 200 and as_signed.content == SVG
    assert (await get(embedded_stack, url, **tampered)).status_code == 403


async def test_inline_links_show_svg_sandboxed(embedded_stack: Stack) -> None:
    url = await file_link(embedded_stack, "covers/u/shown.svg", inline=True)
    shown = await get(embedded_stack, url)
    assert shown.status_code == 200
    assert shown.headers["content-disposition"].startswith("inline")
    assert "sandbox" in shown.headers["content-security-policy"]
