"""The embedded default (SQLite + local folder) makes the same track, with signed links."""

from __future__ import annotations

import io
import time
from urllib.parse import parse_qs, urlsplit

import soundfile as sf

from tests.conftest import Stack


async def test_embedded_default_end_to_end(embedded_stack: Stack) -> None:
    stack = embedded_stack
    user_id, auth = await stack.user(credits=10)
    created = await stack.create_track(auth, prompt="Rainy night lo-fi", duration_s=7)
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "COMPLETE", job

    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    audio = await stack.http.get(track["file_url"])  # no bearer token: the link is the key
    assert audio.status_code == 200
    assert "attachment" in audio.headers["content-disposition"]
    data, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 44100 and abs(len(data) / rate - 7) < 0.1
    cover = await stack.http.get(track["cover_url"])
    assert cover.status_code == 200 and cover.content.lstrip().startswith(b"<")

    # A tampered or expired link is refused.
    tampered = track["file_url"].replace("sig=", "sig=0")[:-1]
    assert (await stack.http.get(tampered)).status_code in (403, 422)
    parts = urlsplit(track["file_url"])
    query = parse_qs(parts.query)
    expired = f"{parts.path}?expires={int(time.time()) - 1}&sig={query['sig'][0]}"
    assert (await stack.http.get(expired)).status_code == 403
    other_key = track["file_url"].replace(
        str(created["track_id"]), "00000000-0000-0000-0000-000000000000"
    )
    assert (await stack.http.get(other_key)).status_code == 403

    assert await stack.storage.list_keys("") == sorted(
        [
            f"covers/{user_id}/{created['track_id']}.svg",
            f"tracks/{user_id}/{created['track_id']}.master.flac",
            f"tracks/{user_id}/{created['track_id']}.stream.mp3",
        ]
    )
    assert await stack.credits(user_id) == 10 - 2
