"""Replicate predictions, using the real `replicate.Client` (1.x; 2.x is a rewrite).

A prediction is created once and then followed by its id alone, so a new worker can pick
up a paid job from its `Submission`.

replicate 1.x quirks this module works around (see `replicate/client.py`):

* Its `RetryTransport` retries 429/503/504 up to 10 times, honouring Retry-After (a
  `Retry-After: 60` would park a poll for ten minutes), but only for GET-like methods:
  a rate-limited POST comes straight back. `ReplicateError` keeps the status but drops
  the headers, so Retry-After is lost either way. `_RetryableStatusTransport`, installed
  below the RetryTransport through the client's documented `transport` argument, turns
  those statuses into `_RetryableStatus` before the loop sees them, keeping Retry-After
  and leaving every retry to the workflow's policy.
* Timeouts surface as raw httpx exceptions, not ReplicateError.
* `Prediction.status` is a closed Literal, so an unknown status fails validation.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import replicate
from pydantic import SecretStr
from replicate.client import RetryTransport
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction

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

DEFAULT_BASE_URL = "https://api.replicate.com"
DEFAULT_VOCALS_MODEL = "minimax/music-1.5"
DEFAULT_INSTRUMENTAL_MODEL = "meta/musicgen"


@dataclass(frozen=True)
class ReplicateModel:
    """What this provider needs to know about one Replicate model."""

    max_duration_s: int
    lyrics: bool = False  # takes `lyrics` next to the style prompt (vocal models)
    duration_field: str | None = None  # input field that sets the length, if any
    seed_field: str | None = None  # input field for a reproducible seed, if any
    extra_input: Mapping[str, Any] = field(default_factory=dict)


# Known models and the longest track each can make, per their model pages at the time of
# writing; pass `models=` to ReplicateProvider to change them or to add models. A model is
# named `owner/name` (official models, which take model-level predictions) or
# `owner/name:version` to pin a version; the table is keyed by `owner/name`.
REPLICATE_MODELS: Mapping[str, ReplicateModel] = {
    # MiniMax Music 1.5: songs with vocals up to about four minutes, from prompt + lyrics.
    "minimax/music-1.5": ReplicateModel(max_duration_s=240, lyrics=True),
    # MusicGen: instrumental; `duration` in seconds, documented up to 30 s per generation.
    "meta/musicgen": ReplicateModel(
        max_duration_s=30,
        duration_field="duration",
        seed_field="seed",
        extra_input={"output_format": "wav"},
    ),
}

_STATES = {
    "starting": JobState.QUEUED,
    "processing": JobState.RUNNING,
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "canceled": JobState.CANCELLED,
}


class _RetryableStatus(Exception):
    """A response replicate's RetryTransport would have retried, with its Retry-After."""

    def __init__(self, status: int, retry_after: str | None, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.retry_after = retry_after
        self.detail = detail


class _RetryableStatusTransport(httpx.AsyncBaseTransport):
    """Raises `_RetryableStatus` for the statuses replicate's RetryTransport retries.

    It sits below that transport, so the retry loop never starts and the caller sees the
    first 429/503/504 with its headers.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if response.status_code not in RetryTransport.RETRYABLE_STATUS_CODES:
            return response
        try:
            await response.aread()
            detail = _problem_detail(response)
        finally:
            await response.aclose()
        raise _RetryableStatus(response.status_code, response.headers.get("retry-after"), detail)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return shorten(response.text)
    if isinstance(body, dict):
        return shorten(body.get("detail") or body.get("title") or body)
    return shorten(body)


def _split_ref(model: str) -> tuple[str, str | None]:
    name, _, version = model.partition(":")
    return name, version or None


class ReplicateProvider(MusicProvider):
    name = "replicate"

    def __init__(
        self,
        *,
        api_token: SecretStr | str | None,
        base_url: str = DEFAULT_BASE_URL,
        vocals_model: str = DEFAULT_VOCALS_MODEL,
        instrumental_model: str = DEFAULT_INSTRUMENTAL_MODEL,
        models: Mapping[str, ReplicateModel] = REPLICATE_MODELS,
        request_timeout_s: float = 15.0,
        download_timeout_s: float = 15.0,
    ) -> None:
        # Both stay under the activity heartbeat timeout (20 s by default): an API call is
        # not heartbeated while it runs, and a download heartbeats once per chunk read.
        for model in (vocals_model, instrumental_model):
            if _split_ref(model)[0] not in models:
                raise ValueError(f"unknown Replicate model {model!r}: describe it in models=")
        self._token = SecretStr(api_token) if isinstance(api_token, str) else api_token
        self._redact = Redactor(self._token.get_secret_value() if self._token else None)
        self._base_url = base_url
        self._vocals_model = vocals_model
        self._instrumental_model = instrumental_model
        self._models = dict(models)
        self._request_timeout_s = request_timeout_s
        self._download_timeout_s = download_timeout_s
        # replicate.Client caches one httpx.AsyncClient, bound to the loop that first used it.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, replicate.Client] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> ReplicateProvider:
        settings = settings or get_settings()
        values: dict[str, Any] = {
            "api_token": settings.replicate_api_token,
            "base_url": settings.replicate_base_url,
            "vocals_model": settings.replicate_vocals_model,
            "instrumental_model": settings.replicate_instrumental_model,
            "request_timeout_s": settings.provider_request_timeout_s,
        }
        return cls(**{**values, **overrides})

    # -- MusicProvider ---------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return bool(self._token and self._token.get_secret_value())

    def model_for(self, request: GenerationRequest) -> str | None:
        return self._vocals_model if request.has_vocals else self._instrumental_model

    def cannot_serve(self, request: GenerationRequest) -> str | None:
        model = self.model_for(request)
        assert model is not None
        spec = self._spec(model)
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
        name, version = _split_ref(model)
        payload = self._input(model, request)
        client = self._client()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                if version is None:
                    prediction = await client.models.predictions.async_create(
                        model=name, input=payload
                    )
                else:
                    prediction = await client.predictions.async_create(
                        version=version, input=payload
                    )
        except Exception as exc:
            raise self._error("create", exc) from None
        urls = {k: v for k, v in (prediction.urls or {}).items() if isinstance(v, str)}
        return prediction.id, urls

    async def poll(self, submission: Submission) -> PollResult:
        prediction = await self._get(submission.run_id)
        state = _STATES[prediction.status]
        progress = prediction.progress.percentage if prediction.progress else None
        if state is JobState.SUCCEEDED:
            progress = 1.0
        error = None
        if state is JobState.FAILED:
            error = self._redact(shorten(prediction.error or "prediction failed"))
        return PollResult(state, progress=progress, error=error)

    async def download(
        self, submission: Submission, dest: Path, heartbeat: Heartbeat
    ) -> DownloadedAudio:
        heartbeat(0.0)
        prediction = await self._get(submission.run_id)
        heartbeat(0.0)
        if prediction.status == "failed":
            raise ProviderError(ErrorCode.JOB_FAILED, f"replicate: {prediction.id} failed")
        if prediction.status == "canceled":
            raise ProviderError(ErrorCode.JOB_CANCELLED, f"replicate: {prediction.id} canceled")
        if prediction.status != "succeeded":
            raise ProviderError(ErrorCode.OTHER, f"replicate: {prediction.id} not finished")
        url = _find_audio(prediction.output)
        if url is None:
            raise ProviderError(
                ErrorCode.JOB_FAILED, f"replicate: {prediction.id} has no audio URL in its output"
            )
        return await stream_audio(
            url,
            dest,
            heartbeat,
            label="replicate",
            timeout_s=self._download_timeout_s,
            redact=self._redact,
        )

    async def cancel(self, submission: Submission) -> None:
        client = self._client()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await client.predictions.async_cancel(submission.run_id)
        except Exception as exc:
            raise self._error("cancel", exc) from None

    async def health(self) -> Health:
        if not self.configured:
            return Health("unconfigured")
        try:
            client = self._client()
            async with asyncio.timeout(self._request_timeout_s):
                await client.accounts.async_current()
        except Exception as exc:
            error = self._error("health", exc)
            if error.status in (401, 403):
                return Health("fail", f"Replicate rejected the token (HTTP {error.status})")
            return Health("fail", error.message)
        return Health("ok")

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            # replicate.Client has no close(); its httpx client is a private lazy property.
            await client._async_client.aclose()

    # -- internals -------------------------------------------------------------------

    def _client(self) -> replicate.Client:
        if not self._token or not self._token.get_secret_value():
            raise ProviderError(ErrorCode.UNCONFIGURED, "replicate: REPLICATE_API_TOKEN is not set")
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # A client left by a loop that closed without aclose() can never be closed now;
            # drop it so it does not keep that loop alive through the weak mapping.
            for stale in [other for other in self._clients if other.is_closed()]:
                del self._clients[stale]
            timeout = httpx.Timeout(
                self._request_timeout_s, connect=min(10.0, self._request_timeout_s)
            )
            client = replicate.Client(
                api_token=self._token.get_secret_value(),
                base_url=self._base_url,
                timeout=timeout,
                transport=_RetryableStatusTransport(httpx.AsyncHTTPTransport()),
            )
            self._clients[loop] = client
        return client

    async def _get(self, prediction_id: str) -> Prediction:
        client = self._client()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                return await client.predictions.async_get(prediction_id)
        except Exception as exc:
            raise self._error("get", exc) from None

    def _spec(self, model: str) -> ReplicateModel:
        return self._models[_split_ref(model)[0]]

    def _input(self, model: str, request: GenerationRequest) -> dict[str, Any]:
        spec = self._spec(model)
        payload: dict[str, Any] = {"prompt": request.prompt, **spec.extra_input}
        if spec.lyrics:
            payload["lyrics"] = request.lyrics
        if spec.duration_field:
            payload[spec.duration_field] = request.duration_s
        if spec.seed_field and request.seed:
            payload[spec.seed_field] = request.seed
        return payload

    def _error(self, op: str, exc: BaseException) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, _RetryableStatus):
            return ProviderError.from_status(
                exc.status,
                self._redact(f"replicate {op}: HTTP {exc.status}: {exc.detail}"),
                retry_after_s=parse_retry_after(exc.retry_after),
            )
        if isinstance(exc, ReplicateError) and exc.status is not None:
            detail = shorten(exc.detail or exc.title or "")
            return ProviderError.from_status(
                exc.status, self._redact(f"replicate {op}: HTTP {exc.status}: {detail}")
            )
        code = ErrorCode.OTHER
        if isinstance(exc, TimeoutError | httpx.TimeoutException | httpx.TransportError):
            code = ErrorCode.TIMEOUT
        detail = shorten(exc) or f"no answer within {self._request_timeout_s:g} s"
        return ProviderError(code, self._redact(f"replicate {op}: {type(exc).__name__}: {detail}"))


def _find_audio(output: Any) -> str | None:
    """The audio URL in a prediction's output: a URL, a list of them, or a dict of them."""
    if isinstance(output, str):
        return output if output.startswith(("http://", "https://")) else None
    if isinstance(output, list):
        for item in output:
            if url := _find_audio(item):
                return url
        return None
    if isinstance(output, dict):
        for key in ("audio", "audio_out", "wav", "mp3", "output"):
            if url := _find_audio(output.get(key)):
                return url
    return None
