"""fal.ai through its queue API: one plain POST submits (see `hosted`), the real
`fal_client.AsyncClient` follows the job by its request id (`status` / `result` /
`cancel` by app and id), so a new worker can pick up a paid job from its `Submission`.

fal-client quirks this module works around (fal-client 1.x, see `fal_client/client.py`):

* Every queue URL is built from the module global `QUEUE_URL_FORMAT`, computed at import
  from FAL_QUEUE_RUN_HOST and always https. `_configure_fal_client` repoints it at our
  `fal_queue_url` setting; that is the only place we touch it.
* Its request helper retries 408/409/429, ingress 502-504 and every transport error up to
  `MAX_ATTEMPTS` (10) times with backoff, submits included: a read timeout after fal
  accepted a submit would pay for a second job. Submits therefore never go through it,
  and we set it to 1 so the workflow's retry policy makes every other retry decision.
* Status calls use a fixed 120 s read timeout, so each call is also bounded here.
* `result()` polls status until COMPLETED before fetching, so call it only once poll has
  said the job succeeded (the MusicProvider contract already guarantees that).
* The request URLs drop the model's subpath: `fal-ai/minimax-music/v2` is submitted to
  `<queue>/fal-ai/minimax-music/v2` but followed at `<queue>/fal-ai/minimax-music/requests/<id>`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client as fal_http
from pydantic import SecretStr

from activities.providers._http import LoopLocal, parse_retry_after, shorten, stream_audio
from activities.providers.base import (
    DownloadedAudio,
    Health,
    Heartbeat,
    JobState,
    PollResult,
    ProviderError,
)
from activities.providers.hosted import HostedModel, HostedProvider, SubmitCall
from core.contracts import ErrorCode, Submission
from core.settings import Settings, get_settings

DEFAULT_QUEUE_URL = "https://queue.fal.run/"
DEFAULT_VOCALS_MODEL = "fal-ai/minimax-music/v2"
DEFAULT_INSTRUMENTAL_MODEL = "fal-ai/stable-audio"

# Known endpoints and the longest track each can make. Limits follow the model pages at the
# time of writing; pass `models=` to FalProvider to change them or to add endpoints.
FAL_MODELS: Mapping[str, HostedModel] = {
    # MiniMax Music 2.0: a full song with vocals from a style prompt and lyrics. It picks
    # its own length (songs run to about four minutes), so it only refuses longer requests.
    "fal-ai/minimax-music/v2": HostedModel(max_duration_s=240, lyrics=True),
    # Stable Audio Open 1.0: instrumental, length set by seconds_total, at most 47 s.
    "fal-ai/stable-audio": HostedModel(max_duration_s=47, duration_field="seconds_total"),
}

# A well-formed id no job will have: asking for its status proves the key without cost.
_PROBE_REQUEST_ID = "00000000-0000-0000-0000-000000000000"
# Cancel answers meaning "nothing left to stop": already finished, or unknown.
_CANCEL_NOOP_STATUSES = frozenset({400, 404, 409, 410})


def _configure_fal_client(queue_url: str) -> None:
    """Point fal-client at our queue URL and turn off its own retries (see module doc).

    Both are process-wide module globals, so every FalProvider in one process shares one
    queue URL; the worker builds them all from the same setting.
    """
    fal_http.QUEUE_URL_FORMAT = queue_url if queue_url.endswith("/") else queue_url + "/"
    fal_http.MAX_ATTEMPTS = 1


class FalProvider(HostedProvider):
    name = "fal"
    display_name = "fal"
    key_name = "FAL_KEY"

    def __init__(
        self,
        *,
        key: SecretStr | str | None,
        queue_url: str = DEFAULT_QUEUE_URL,
        vocals_model: str = DEFAULT_VOCALS_MODEL,
        instrumental_model: str = DEFAULT_INSTRUMENTAL_MODEL,
        models: Mapping[str, HostedModel] = FAL_MODELS,
        request_timeout_s: float = 15.0,
        download_timeout_s: float = 15.0,
    ) -> None:
        super().__init__(
            key=key,
            vocals_model=vocals_model,
            instrumental_model=instrumental_model,
            models=models,
            request_timeout_s=request_timeout_s,
            download_timeout_s=download_timeout_s,
        )
        self._queue_url = queue_url if queue_url.endswith("/") else queue_url + "/"
        self._clients = LoopLocal(
            lambda: fal_client.AsyncClient(key=self._secret(), default_timeout=request_timeout_s)
        )
        _configure_fal_client(queue_url)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> FalProvider:
        settings = settings or get_settings()
        values: dict[str, Any] = {
            "key": settings.fal_key,
            "queue_url": settings.fal_queue_url,
            "vocals_model": settings.fal_vocals_model,
            "instrumental_model": settings.fal_instrumental_model,
            "request_timeout_s": settings.provider_request_timeout_s,
        }
        return cls(**{**values, **overrides})

    # -- HostedProvider ------------------------------------------------------------------

    def _submit_call(
        self, model: str, payload: dict[str, Any], webhook_url: str | None
    ) -> SubmitCall:
        return SubmitCall(
            url=self._queue_url + model,
            body=payload,
            headers={"Authorization": f"Key {self._secret()}"},
            params={"fal_webhook": webhook_url} if webhook_url else {},
        )

    def _parse_submit(self, answer: Any) -> tuple[str, dict[str, str]]:
        urls = {
            k: str(answer[k]) for k in ("status_url", "response_url", "cancel_url") if k in answer
        }
        return str(answer["request_id"]), urls

    # -- MusicProvider -------------------------------------------------------------------

    async def poll(self, submission: Submission) -> PollResult:
        client = self._client()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                status = await client.status(self._app(submission), submission.run_id)
        except Exception as exc:
            raise self._error("status", exc) from None
        if isinstance(status, fal_client.Queued):
            return PollResult(JobState.QUEUED)
        if isinstance(status, fal_client.InProgress):
            return PollResult(JobState.RUNNING)
        if isinstance(status, fal_client.Completed):
            if status.error:
                kind = status.error_type or "error"
                return PollResult(JobState.FAILED, error=self._redact(f"{kind}: {status.error}"))
            return PollResult(JobState.SUCCEEDED, progress=1.0)
        raise ProviderError(ErrorCode.OTHER, f"fal status: unexpected {type(status).__name__}")

    async def download(
        self, submission: Submission, dest: Path, heartbeat: Heartbeat
    ) -> DownloadedAudio:
        client = self._client()
        heartbeat(0.0)
        try:
            async with asyncio.timeout(self._request_timeout_s):
                result = await client.result(self._app(submission), submission.run_id)
        except Exception as exc:
            raise self._error("result", exc) from None
        heartbeat(0.0)
        url, hinted_type = _find_audio(result)
        if url is None:
            raise ProviderError(
                ErrorCode.JOB_FAILED, f"fal result for {submission.run_id} has no audio URL"
            )
        return await stream_audio(
            url,
            dest,
            heartbeat,
            label="fal",
            timeout_s=self._download_timeout_s,
            hinted_type=hinted_type,
            redact=self._redact,
        )

    async def cancel(self, submission: Submission) -> None:
        client = self._client()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await client.cancel(self._app(submission), submission.run_id)
        except fal_client.FalClientHTTPError as exc:
            if exc.status_code not in _CANCEL_NOOP_STATUSES:
                raise self._error("cancel", exc) from None
        except Exception as exc:
            raise self._error("cancel", exc) from None

    async def health(self) -> Health:
        if not self.configured:
            return Health("unconfigured")
        try:
            client = self._client()
            async with asyncio.timeout(self._request_timeout_s):
                await client.status(self._vocals_model, _PROBE_REQUEST_ID)
        except fal_client.FalClientHTTPError as exc:
            # Past authentication fal answers "no such request"; 401/403 mean the key is bad.
            if exc.status_code in (401, 403):
                return Health("fail", f"fal rejected the key (HTTP {exc.status_code})")
            if exc.status_code < 500 and exc.status_code != 429:
                return Health("ok")
            return Health("fail", f"fal queue answered HTTP {exc.status_code}")
        except Exception as exc:
            return Health("fail", self._error("health", exc).message)
        return Health("ok")

    async def aclose(self) -> None:
        client = self._clients.pop()
        if client is not None:
            # fal-client has no close(); its httpx client sits behind a private cached property.
            http = await client._client
            await http.aclose()

    # -- internals -------------------------------------------------------------------

    def _client(self) -> fal_client.AsyncClient:
        self._secret()  # UNCONFIGURED before any call
        _configure_fal_client(self._queue_url)
        return self._clients.get()

    def _app(self, submission: Submission) -> str:
        return submission.model or self._model(submission.request)

    def _error(self, op: str, exc: BaseException) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, fal_client.FalClientHTTPError):
            status = exc.status_code
            return ProviderError.from_status(
                status,
                self._redact(f"fal {op}: HTTP {status}: {shorten(exc.message)}"),
                retry_after_s=parse_retry_after(exc.response.headers.get("retry-after")),
            )
        return self._transport_error(op, exc)


def _find_audio(result: Any) -> tuple[str | None, str | None]:
    """The audio URL in a fal result, and the content type fal reported for it."""
    if not isinstance(result, dict):
        return None, None
    for key in ("audio", "audio_file", "audio_url", "output"):
        value = result.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value, None
        if isinstance(value, dict) and isinstance(value.get("url"), str):
            hinted = value.get("content_type")
            return value["url"], hinted if isinstance(hinted, str) else None
    return None, None
