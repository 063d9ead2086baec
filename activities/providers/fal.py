"""fal.ai through its queue API, using the real `fal_client.AsyncClient`.

A job is submitted once, then followed by its request id alone (`status` / `result` /
`cancel` by app and id), so a new worker can pick up a paid job from its `Submission`.

fal-client quirks this module works around (fal-client 1.x, see `fal_client/client.py`):

* Every queue URL is built from the module global `QUEUE_URL_FORMAT`, computed at import
  from FAL_QUEUE_RUN_HOST and always https. `_configure_fal_client` repoints it at our
  `fal_queue_url` setting; that is the only place we touch it.
* Its request helper retries 408/409/429, ingress 502-504 and every transport error up to
  `MAX_ATTEMPTS` (10) times with backoff, submits included: slow to give up on a 429, and
  a read timeout after fal accepted a submit would pay for a second job. We set it to 1 so
  the workflow's retry policy, which knows about cost, makes every retry decision.
* Status calls use a fixed 120 s read timeout, so each call is also bounded here.
* `result()` polls status until COMPLETED before fetching, so call it only once poll has
  said the job succeeded (the MusicProvider contract already guarantees that).
* The request URLs drop the model's subpath: `fal-ai/minimax-music/v2` is submitted to
  `<queue>/fal-ai/minimax-music/v2` but followed at `<queue>/fal-ai/minimax-music/requests/<id>`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client as fal_http
import httpx
from pydantic import SecretStr

from activities.providers._http import Redactor, parse_retry_after, shorten, stream_audio
from activities.providers.base import (
    DownloadedAudio,
    ErrorCode,
    Health,
    Heartbeat,
    JobState,
    MusicProvider,
    PollResult,
    ProviderError,
)
from core.contracts import GenerationRequest, Submission
from core.settings import Settings, get_settings

DEFAULT_QUEUE_URL = "https://queue.fal.run/"
DEFAULT_VOCALS_MODEL = "fal-ai/minimax-music/v2"
DEFAULT_INSTRUMENTAL_MODEL = "fal-ai/stable-audio"


@dataclass(frozen=True)
class FalModel:
    """What this provider needs to know about one fal endpoint."""

    max_duration_s: int
    lyrics: bool = False  # takes `lyrics` next to the style prompt (vocal models)
    duration_field: str | None = None  # input field that sets the length, if any
    extra_input: Mapping[str, Any] = field(default_factory=dict)


# Known endpoints and the longest track each can make. Limits follow the model pages at the
# time of writing; pass `models=` to FalProvider to change them or to add endpoints.
FAL_MODELS: Mapping[str, FalModel] = {
    # MiniMax Music 2.0: a full song with vocals from a style prompt and lyrics. It picks
    # its own length (songs run to about four minutes), so it only refuses longer requests.
    "fal-ai/minimax-music/v2": FalModel(max_duration_s=240, lyrics=True),
    # Stable Audio Open 1.0: instrumental, length set by seconds_total, at most 47 s.
    "fal-ai/stable-audio": FalModel(max_duration_s=47, duration_field="seconds_total"),
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


class FalProvider(MusicProvider):
    name = "fal"

    def __init__(
        self,
        *,
        key: SecretStr | str | None,
        queue_url: str = DEFAULT_QUEUE_URL,
        vocals_model: str = DEFAULT_VOCALS_MODEL,
        instrumental_model: str = DEFAULT_INSTRUMENTAL_MODEL,
        models: Mapping[str, FalModel] = FAL_MODELS,
        request_timeout_s: float = 15.0,
        download_timeout_s: float = 15.0,
    ) -> None:
        # Both stay under the activity heartbeat timeout (20 s by default): an API call is
        # not heartbeated while it runs, and a download heartbeats once per chunk read.
        for model in (vocals_model, instrumental_model):
            if model not in models:
                raise ValueError(f"unknown fal model {model!r}: describe it in models=")
        self._key = SecretStr(key) if isinstance(key, str) else key
        self._redact = Redactor(self._key.get_secret_value() if self._key else None)
        self._queue_url = queue_url
        self._vocals_model = vocals_model
        self._instrumental_model = instrumental_model
        self._models = dict(models)
        self._request_timeout_s = request_timeout_s
        self._download_timeout_s = download_timeout_s
        # An AsyncClient holds an httpx client bound to the loop that first used it.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, fal_client.AsyncClient
        ] = weakref.WeakKeyDictionary()
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

    # -- MusicProvider ---------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return bool(self._key and self._key.get_secret_value())

    def model_for(self, request: GenerationRequest) -> str | None:
        return self._vocals_model if request.has_vocals else self._instrumental_model

    def cannot_serve(self, request: GenerationRequest) -> str | None:
        model = self.model_for(request)
        assert model is not None
        spec = self._models[model]
        if request.duration_s > spec.max_duration_s:
            return f"{model} makes at most {spec.max_duration_s} s (asked {request.duration_s} s)"
        if spec.lyrics and not (request.lyrics or "").strip():
            return f"{model} needs lyrics for a vocal track"
        return None

    async def submit(
        self, request: GenerationRequest, *, track_id: str
    ) -> tuple[str, dict[str, str]]:
        if reason := self.cannot_serve(request):
            raise ProviderError(ErrorCode.UNSUPPORTED, reason)
        model = self.model_for(request)
        assert model is not None
        client = self._client()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                handle = await client.submit(model, self._input(model, request))
        except Exception as exc:
            raise self._error("submit", exc) from None
        return handle.request_id, {
            "status_url": handle.status_url,
            "response_url": handle.response_url,
            "cancel_url": handle.cancel_url,
        }

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
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            # fal-client has no close(); its httpx client sits behind a private cached property.
            http = await client._client
            await http.aclose()

    # -- internals -------------------------------------------------------------------

    def _client(self) -> fal_client.AsyncClient:
        if not self._key or not self._key.get_secret_value():
            raise ProviderError(ErrorCode.UNCONFIGURED, "fal: FAL_KEY is not set")
        _configure_fal_client(self._queue_url)
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # A client left by a loop that closed without aclose() can never be closed now;
            # drop it so it does not keep that loop alive through the weak mapping.
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]
            client = fal_client.AsyncClient(
                key=self._key.get_secret_value(), default_timeout=self._request_timeout_s
            )
            self._clients[loop] = client
        return client

    def _app(self, submission: Submission) -> str:
        return submission.model or self.model_for(submission.request) or self._vocals_model

    def _input(self, model: str, request: GenerationRequest) -> dict[str, Any]:
        spec = self._models[model]
        payload: dict[str, Any] = {"prompt": request.prompt, **spec.extra_input}
        if spec.lyrics:
            payload["lyrics"] = request.lyrics
        if spec.duration_field:
            payload[spec.duration_field] = request.duration_s
        return payload

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
        code = ErrorCode.OTHER
        if isinstance(exc, TimeoutError | httpx.TimeoutException | httpx.TransportError):
            code = ErrorCode.TIMEOUT
        detail = shorten(exc) or f"no answer within {self._request_timeout_s:g} s"
        return ProviderError(code, self._redact(f"fal {op}: {type(exc).__name__}: {detail}"))


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
