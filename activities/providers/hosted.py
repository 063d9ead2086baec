"""What the hosted providers (fal, Replicate) share: the model table, the request
payload, the one-shot submit and the error mapping.

Each subclass keeps only what differs: its endpoints, payloads, answers and the quirks
of its client library (which still serves polls, results and cancels).

The submit is one plain `httpx` POST on a fresh connection, never a library call: both
libraries retry some requests by themselves, and a re-sent submit is a second paid job.
A fresh connection also means a connect error proves nothing left, where a stale pooled
connection could fail after sending.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from activities.providers._http import Redactor, parse_retry_after, shorten, tls_context
from activities.providers.base import MusicProvider, ProviderError
from core.contracts import ErrorCode, GenerationRequest

# A connect error or a pool wait proves the request never left; anything after that
# (timeouts while waiting for the answer, resets, 5xx) may follow a job being created.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


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


class HostedProvider(MusicProvider):
    # For messages: the environment variable that holds the key, the provider's name.
    key_name: str
    display_name: str

    def __init__(
        self,
        *,
        key: SecretStr | str | None,
        vocals_model: str,
        instrumental_model: str,
        models: Mapping[str, HostedModel],
        request_timeout_s: float,
        download_timeout_s: float,
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
        self._redact: Callable[[str], str] = Redactor(
            self._key.get_secret_value() if self._key else None
        )
        self._vocals_model = vocals_model
        self._instrumental_model = instrumental_model
        self._request_timeout_s = request_timeout_s
        self._download_timeout_s = download_timeout_s

    # -- what differs per provider ------------------------------------------------------

    @abstractmethod
    def _submit_call(
        self, model: str, payload: dict[str, Any], webhook_url: str | None
    ) -> SubmitCall:
        """The one POST that creates a job for `payload` on `model`."""

    @abstractmethod
    def _parse_submit(self, answer: Any) -> tuple[str, dict[str, str]]:
        """The run id and follow-up URLs in a 2xx answer to the submit."""

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
        timeout = httpx.Timeout(self._request_timeout_s, connect=min(10.0, self._request_timeout_s))
        try:
            async with (
                asyncio.timeout(self._request_timeout_s),
                # No transport retries (httpx's default), and no pooled connection.
                httpx.AsyncClient(
                    timeout=timeout, follow_redirects=False, verify=tls_context()
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
            error = ProviderError.from_status(
                response.status_code,
                self._redact(
                    f"{self.name} submit: HTTP {response.status_code}: {_detail(response)}"
                ),
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
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

    def _transport_error(self, op: str, exc: BaseException) -> ProviderError:
        """A call that got no HTTP answer: timed out, refused or cut."""
        code = ErrorCode.OTHER
        if isinstance(exc, TimeoutError | httpx.TimeoutException | httpx.TransportError):
            code = ErrorCode.TIMEOUT
        detail = shorten(exc) or f"no answer within {self._request_timeout_s:g} s"
        return ProviderError(
            code, self._redact(f"{self.name} {op}: {type(exc).__name__}: {detail}")
        )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return shorten(response.text)
    if isinstance(body, dict):
        return shorten(body.get("detail") or body.get("title") or body.get("error") or body)
    return shorten(body)
