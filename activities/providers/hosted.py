"""What the hosted providers (fal, Replicate) share: the model table, the request
payload, the one-shot submit, the follow-up calls through their client library
(bounded, redacted, mapped to `ProviderError`), the download, cancel, health probe and
client lifetime.

Each subclass keeps only what differs: its endpoints and payloads (`_submit_call`,
`_parse_submit`, `poll`, `_audio_url`, `_cancel_job`, `_probe`), the quirks of its client
library (`_new_client`, `_close_client`) and its error mapping (`_http_failure`).

The submit is one plain `httpx` POST on a fresh connection, never a library call: both
libraries retry some requests by themselves, and a re-sent submit is a second paid job.
A fresh connection also means a connect error proves nothing left, where a stale pooled
connection could fail after sending.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import httpx
from pydantic import SecretStr

from activities.providers._http import (
    DownloadRules,
    LoopLocal,
    client_timeout,
    parse_retry_after,
    problem_detail,
    shorten,
    stream_audio,
    tls_context,
)
from activities.providers.base import (
    DownloadedAudio,
    Heartbeat,
    MusicProvider,
    ProviderError,
)
from core.contracts import ErrorCode, GenerationRequest, ProviderHealth, Submission
from core.logging import SecretScrubber
from core.settings import Settings, get_settings

# A connect error or a pool wait proves the request never left; anything after that
# (timeouts while waiting for the answer, resets, 5xx) may follow a job being created.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)

C = TypeVar("C")  # the provider library's client
T = TypeVar("T")


@dataclass(frozen=True)
class HostedModel:
    """What a hosted provider needs to know about one of its models."""

    max_duration_s: int
    lyrics: bool = False  # takes `lyrics` next to the style prompt (vocal models)
    duration_field: str | None = None  # input field that sets the length, if any
    seed_field: str | None = None  # input field for a reproducible seed, if any
    extra_input: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmitCall:
    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpFailure:
    """An HTTP error answer as a client library reported it, for `ProviderError.from_status`."""

    status: int
    detail: str
    retry_after: str | None = None  # the raw Retry-After header, when the library kept it


class HostedProvider(MusicProvider, Generic[C]):
    # For messages: the environment variable that holds the key, the provider's name and
    # what the provider calls its credential.
    key_name: str
    display_name: str
    key_noun: str = "key"
    # Cancel answers meaning "nothing left to stop" (already finished, or unknown).
    cancel_noop_statuses: frozenset[int] = frozenset()

    def __init__(
        self,
        *,
        key: SecretStr | str | None,
        vocals_model: str,
        instrumental_model: str,
        models: Mapping[str, HostedModel],
        request_timeout_s: float,
        download_timeout_s: float,
        downloads: DownloadRules | None = None,
    ) -> None:
        # Both stay under the activity heartbeat timeout (20 s by default): an API call is
        # not heartbeated while it runs, and a download heartbeats once per chunk read.
        self._models = dict(models)
        for model in (vocals_model, instrumental_model):
            if self._model_name(model) not in self._models:
                raise ValueError(
                    f"unknown {self.display_name} model {model!r}: describe it in models="
                )
        self._key = SecretStr(key) if isinstance(key, str) else key
        self._redact: Callable[[str], str] = SecretScrubber(
            [self._key.get_secret_value()] if self._key else []
        ).scrub_text
        self._vocals_model = vocals_model
        self._instrumental_model = instrumental_model
        self._request_timeout_s = request_timeout_s
        self._download_timeout_s = download_timeout_s
        self._downloads = downloads or DownloadRules()
        # Built lazily: a subclass sets its endpoints after this returns.
        self._clients: LoopLocal[C] = LoopLocal(self._new_client)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Self:
        settings = settings or get_settings()
        values = {
            **cls._settings_values(settings),
            "request_timeout_s": settings.provider_request_timeout_s,
            "downloads": DownloadRules.from_settings(settings),
        }
        return cls(**{**values, **overrides})

    # -- what differs per provider -------------------------------------------------------

    @classmethod
    @abstractmethod
    def _settings_values(cls, settings: Settings) -> dict[str, Any]:
        """Constructor arguments from this provider's settings: key, URL, models."""

    @abstractmethod
    def _submit_call(
        self, model: str, payload: dict[str, Any], webhook_url: str | None
    ) -> SubmitCall:
        """The one POST that creates a job for `payload` on `model`."""

    @abstractmethod
    def _parse_submit(self, answer: Any) -> tuple[str, dict[str, str]]:
        """The run id and follow-up URLs in a 2xx answer to the submit."""

    @abstractmethod
    async def _audio_url(self, submission: Submission) -> tuple[str | None, str | None]:
        """The finished job's audio URL (None if it has none) and the content type the
        provider reported for it, if any."""

    @abstractmethod
    async def _cancel_job(self, client: C, submission: Submission) -> None:
        """Ask the provider to stop the job."""

    @abstractmethod
    async def _probe(self, client: C) -> None:
        """The cheapest authenticated call, to prove the key works."""

    def _probe_proves_key(self, status: int) -> bool:
        """Whether the probe failing with `status` (not 401/403) still proves the key."""
        return False

    @abstractmethod
    def _new_client(self) -> C:
        """A library client for the current event loop."""

    @abstractmethod
    async def _close_client(self, client: C) -> None:
        """Close a client from `_new_client`."""

    @abstractmethod
    def _http_failure(self, exc: BaseException) -> HttpFailure | None:
        """The HTTP error answer behind a library exception; None if it got no answer."""

    def _model_name(self, model: str) -> str:
        """The key of `model` in the model table."""
        return model

    # -- MusicProvider -------------------------------------------------------------------

    @property
    def configured(self) -> bool:
        return bool(self._key and self._key.get_secret_value())

    def model_for(self, request: GenerationRequest) -> str | None:
        return self._vocals_model if request.has_vocals else self._instrumental_model

    def cannot_serve(self, request: GenerationRequest) -> str | None:
        model = self._model(request)
        spec = self._spec(model)
        if request.duration_s > spec.max_duration_s:
            return f"{model} makes at most {spec.max_duration_s} s (asked {request.duration_s} s)"
        if spec.lyrics and not (request.lyrics or "").strip():
            return f"{model} needs lyrics for a vocal track"
        return None

    async def submit(
        self,
        request: GenerationRequest,
        *,
        track_id: str,
        token: str | None = None,
        webhook_url: str | None = None,
    ) -> tuple[str, dict[str, str]]:
        if reason := self.cannot_serve(request):
            raise ProviderError(ErrorCode.UNSUPPORTED, reason)
        model = self._model(request)
        call = self._submit_call(model, self.provider_input(model, request), webhook_url)
        try:
            async with (
                asyncio.timeout(self._request_timeout_s),
                # No transport retries (httpx's default), and no pooled connection.
                httpx.AsyncClient(
                    timeout=client_timeout(self._request_timeout_s),
                    follow_redirects=False,
                    verify=tls_context(),
                ) as http,
            ):
                response = await http.post(
                    call.url, json=call.body, headers=call.headers, params=call.params
                )
        except _NOT_SENT as exc:
            raise self._transport_error("submit", exc) from None
        except (TimeoutError, httpx.HTTPError) as exc:
            error = self._transport_error("submit", exc)
            error.sent = True
            raise error from None
        if response.status_code >= 400:
            error = self._status_error(
                "submit",
                HttpFailure(
                    response.status_code,
                    problem_detail(response),
                    response.headers.get("retry-after"),
                ),
            )
            # A 4xx is the provider refusing; a 5xx may come from a gateway after the job
            # was created behind it.
            error.sent = response.status_code >= 500
            raise error from None
        try:
            return self._parse_submit(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(
                ErrorCode.OTHER,
                f"{self.name} submit: unreadable answer ({type(exc).__name__})",
                sent=True,
            ) from None

    async def download(
        self,
        submission: Submission,
        dest: Path,
        heartbeat: Heartbeat,
        audio_url: str | None = None,
    ) -> DownloadedAudio:
        if audio_url is not None:
            try:
                return await self._stream(audio_url, dest, heartbeat, None)
            except ProviderError as error:
                # A poll's URL can expire before a late attempt uses it: ask for a fresh one.
                if error.status is None or not 400 <= error.status < 500:
                    raise
        # Beat around the result call: it is not heartbeated while it runs.
        heartbeat(0.0)
        url, hinted_type = await self._audio_url(submission)
        heartbeat(0.0)
        if url is None:
            raise ProviderError(
                ErrorCode.JOB_FAILED,
                f"{self.name}: {submission.run_id} has no audio URL in its result",
            )
        return await self._stream(url, dest, heartbeat, hinted_type)

    async def _stream(
        self, url: str, dest: Path, heartbeat: Heartbeat, hinted_type: str | None
    ) -> DownloadedAudio:
        return await stream_audio(
            url,
            dest,
            heartbeat,
            label=self.name,
            timeout_s=self._download_timeout_s,
            rules=self._downloads,
            hinted_type=hinted_type,
            redact=self._redact,
        )

    async def cancel(self, submission: Submission) -> None:
        try:
            await self._call("cancel", lambda client: self._cancel_job(client, submission))
        except ProviderError as error:
            if error.status not in self.cancel_noop_statuses:
                raise

    async def health(self) -> ProviderHealth:
        if not self.configured:
            return ProviderHealth(status="unconfigured")
        try:
            await self._call("health", self._probe)
        except Exception as exc:
            error = self._error("health", exc)
            if error.status in (401, 403):
                return ProviderHealth(
                    status="fail",
                    error=f"{self.display_name} rejected the {self.key_noun} (HTTP {error.status})",
                )
            if error.status is not None and self._probe_proves_key(error.status):
                return ProviderHealth(status="ok")
            return ProviderHealth(status="fail", error=error.message)
        return ProviderHealth(status="ok")

    async def aclose(self) -> None:
        client = self._clients.pop()
        if client is not None:
            await self._close_client(client)

    # -- shared helpers ------------------------------------------------------------------

    def provider_input(self, model: str, request: GenerationRequest) -> dict[str, Any]:
        """The model's input for `request`: what is sent, and what a listing shows."""
        spec = self._spec(model)
        payload: dict[str, Any] = {"prompt": request.prompt, **spec.extra_input}
        if spec.lyrics:
            payload["lyrics"] = request.lyrics
        if spec.duration_field:
            payload[spec.duration_field] = request.duration_s
        if spec.seed_field and request.seed:
            payload[spec.seed_field] = request.seed
        return payload

    def _client(self) -> C:
        self._secret()  # UNCONFIGURED before any call
        return self._clients.get()

    async def _call(self, op: str, call: Callable[[C], Awaitable[T]]) -> T:
        """One library call on this loop's client. Each is bounded here as well, since the
        libraries' own timeouts do not cover every call (fal's status uses a fixed 120 s)."""
        client = self._client()
        try:
            async with asyncio.timeout(self._request_timeout_s):
                return await call(client)
        except Exception as exc:
            raise self._error(op, exc) from None

    def _secret(self) -> str:
        if not self._key or not self._key.get_secret_value():
            raise ProviderError(ErrorCode.UNCONFIGURED, f"{self.name}: {self.key_name} is not set")
        return self._key.get_secret_value()

    def _model(self, request: GenerationRequest) -> str:
        model = self.model_for(request)
        assert model is not None
        return model

    def _spec(self, model: str) -> HostedModel:
        return self._models[self._model_name(model)]

    def _error(self, op: str, exc: BaseException) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        failure = self._http_failure(exc)
        if failure is None:
            return self._transport_error(op, exc)
        return self._status_error(op, failure)

    def _status_error(self, op: str, failure: HttpFailure) -> ProviderError:
        """An HTTP error answer: classified by status, keeping Retry-After, key redacted."""
        return ProviderError.from_status(
            failure.status,
            self._redact(f"{self.name} {op}: HTTP {failure.status}: {shorten(failure.detail)}"),
            retry_after_s=parse_retry_after(failure.retry_after),
        )

    def _transport_error(self, op: str, exc: BaseException) -> ProviderError:
        """A call that got no HTTP answer: timed out, refused or cut."""
        code = ErrorCode.OTHER
        if isinstance(exc, TimeoutError | httpx.TimeoutException | httpx.TransportError):
            code = ErrorCode.TIMEOUT
        detail = shorten(exc) or f"no answer within {self._request_timeout_s:g} s"
        return ProviderError(
            code, self._redact(f"{self.name} {op}: {type(exc).__name__}: {detail}")
        )
