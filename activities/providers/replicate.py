"""Replicate predictions: one plain POST creates (see `hosted`), the real
`replicate.Client` (1.x; 2.x is a rewrite) follows the prediction by its id alone, so a
new worker can pick up a paid job from its `Submission`, and lists recent predictions to
find one whose create answer was lost.

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

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx
import replicate
from pydantic import SecretStr
from replicate.client import RetryTransport
from replicate.exceptions import ReplicateError
from replicate.pagination import Page
from replicate.prediction import Prediction

from activities.providers._http import DownloadRules, client_timeout, problem_detail, shorten
from activities.providers.base import JobState, PollResult, ProviderError
from activities.providers.hosted import HostedModel, HostedProvider, HttpFailure, SubmitCall
from core.contracts import ErrorCode, GenerationRequest, Submission
from core.settings import Settings

DEFAULT_BASE_URL = "https://api.replicate.com"
DEFAULT_VOCALS_MODEL = "minimax/music-1.5"
DEFAULT_INSTRUMENTAL_MODEL = "meta/musicgen"


# Known models and the longest track each can make, per their model pages at the time of
# writing; pass `models=` to ReplicateProvider to change them or to add models. A model is
# named `owner/name` (official models, which take model-level predictions) or
# `owner/name:version` to pin a version; the table is keyed by `owner/name`.
REPLICATE_MODELS: Mapping[str, HostedModel] = {
    # MiniMax Music 1.5: songs with vocals up to about four minutes, from prompt + lyrics.
    "minimax/music-1.5": HostedModel(max_duration_s=240, lyrics=True),
    # MusicGen: instrumental; `duration` in seconds, documented up to 30 s per generation.
    "meta/musicgen": HostedModel(
        max_duration_s=30,
        duration_field="duration",
        seed_field="seed",
        extra_input={"output_format": "wav"},
    ),
}

# How far back a listing is read for a lost create, and the clock skew allowed between
# our row's timestamp and Replicate's `created_at`.
_LISTING_PAGES = 3
_CLOCK_SKEW = timedelta(seconds=30)

_STATES = {
    "starting": JobState.QUEUED,
    "processing": JobState.RUNNING,
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "canceled": JobState.CANCELLED,
}


class _RetryableStatus(Exception):
    """A response replicate's RetryTransport would have retried, with its Retry-After."""

    def __init__(self, failure: HttpFailure) -> None:
        super().__init__(f"HTTP {failure.status}: {failure.detail}")
        self.failure = failure


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
            detail = problem_detail(response)
        finally:
            await response.aclose()
        retry_after = response.headers.get("retry-after")
        raise _RetryableStatus(HttpFailure(response.status_code, detail, retry_after))

    async def aclose(self) -> None:
        await self._inner.aclose()


def _split_ref(model: str) -> tuple[str, str | None]:
    name, _, version = model.partition(":")
    return name, version or None


class ReplicateProvider(HostedProvider[replicate.Client]):
    name = "replicate"
    display_name = "Replicate"
    key_name = "REPLICATE_API_TOKEN"
    key_noun = "token"

    def __init__(
        self,
        *,
        api_token: SecretStr | str | None,
        base_url: str = DEFAULT_BASE_URL,
        vocals_model: str = DEFAULT_VOCALS_MODEL,
        instrumental_model: str = DEFAULT_INSTRUMENTAL_MODEL,
        models: Mapping[str, HostedModel] = REPLICATE_MODELS,
        request_timeout_s: float = 15.0,
        download_timeout_s: float = 15.0,
        downloads: DownloadRules | None = None,
    ) -> None:
        super().__init__(
            key=api_token,
            vocals_model=vocals_model,
            instrumental_model=instrumental_model,
            models=models,
            request_timeout_s=request_timeout_s,
            download_timeout_s=download_timeout_s,
            downloads=downloads,
        )
        self._base_url = base_url.rstrip("/")

    @classmethod
    def _settings_values(cls, settings: Settings) -> dict[str, Any]:
        return {
            "api_token": settings.replicate_api_token,
            "base_url": settings.replicate_base_url,
            "vocals_model": settings.replicate_vocals_model,
            "instrumental_model": settings.replicate_instrumental_model,
        }

    # -- endpoints and payloads ----------------------------------------------------------

    def _model_name(self, model: str) -> str:
        return _split_ref(model)[0]

    def _submit_call(
        self, model: str, payload: dict[str, Any], webhook_url: str | None
    ) -> SubmitCall:
        name, version = _split_ref(model)
        body: dict[str, Any] = {"input": payload}
        url = f"{self._base_url}/v1/models/{name}/predictions"
        if version is not None:
            body["version"] = version
            url = f"{self._base_url}/v1/predictions"
        if webhook_url:
            body["webhook"] = webhook_url
            body["webhook_events_filter"] = ["completed"]
        return SubmitCall(url, body, {"Authorization": f"Bearer {self._secret()}"})

    def _parse_submit(self, answer: Any) -> tuple[str, dict[str, str]]:
        urls = answer.get("urls") or {}
        return str(answer["id"]), {k: v for k, v in urls.items() if isinstance(v, str)}

    async def find_submission(
        self, request: GenerationRequest, *, since: datetime, exclude: set[str]
    ) -> str | None:
        """Our prediction among the newest ones: same model, same input, created after
        our row was written and not already matched to another row. Replicate keeps each
        prediction's input for about an hour, long enough for this."""
        model = self._model(request)
        wanted = self.provider_input(model, request)
        name = self._model_name(model)
        cursor: Any = ...
        found: list[tuple[str, str]] = []
        for _ in range(_LISTING_PAGES):
            page = await self._call("list", _listing(cursor))
            older = False
            for prediction in page.results:
                created = _parse_time(prediction.created_at)
                if created is not None and created < since - _CLOCK_SKEW:
                    older = True
                    continue
                same_model = (prediction.model or "").split(":")[0] in (name, "")
                if same_model and prediction.input == wanted and prediction.id not in exclude:
                    found.append((prediction.created_at or "", prediction.id))
            if older or not page.next:
                break
            cursor = page.next
        # The earliest match is the submission that was sent first.
        return min(found)[1] if found else None

    async def poll(self, submission: Submission) -> PollResult:
        prediction = await self._get(submission.run_id)
        state = _STATES[prediction.status]
        progress = prediction.progress.percentage if prediction.progress else None
        if state is JobState.SUCCEEDED:
            progress = 1.0
        error = audio_url = None
        if state is JobState.FAILED:
            error = self._redact(shorten(prediction.error or "prediction failed"))
        if state is JobState.SUCCEEDED:
            audio_url = _find_audio(prediction.output)
        return PollResult(state, progress=progress, error=error, audio_url=audio_url)

    async def _audio_url(self, submission: Submission) -> tuple[str | None, str | None]:
        prediction = await self._get(submission.run_id)
        if prediction.status == "failed":
            raise ProviderError(ErrorCode.JOB_FAILED, f"replicate: {prediction.id} failed")
        if prediction.status == "canceled":
            raise ProviderError(ErrorCode.JOB_CANCELLED, f"replicate: {prediction.id} canceled")
        if prediction.status != "succeeded":
            raise ProviderError(ErrorCode.OTHER, f"replicate: {prediction.id} not finished")
        return _find_audio(prediction.output), None

    async def _cancel_job(self, client: replicate.Client, submission: Submission) -> None:
        # Replicate answers 200 with the prediction even when it had already finished.
        await client.predictions.async_cancel(submission.run_id)

    async def _probe(self, client: replicate.Client) -> None:
        await client.accounts.async_current()

    async def _get(self, prediction_id: str) -> Prediction:
        return await self._call("get", lambda client: client.predictions.async_get(prediction_id))

    # -- the client library --------------------------------------------------------------

    def _new_client(self) -> replicate.Client:
        return replicate.Client(
            api_token=self._secret(),
            base_url=self._base_url,
            timeout=client_timeout(self._request_timeout_s),
            transport=_RetryableStatusTransport(httpx.AsyncHTTPTransport()),
        )

    async def _close_client(self, client: replicate.Client) -> None:
        # replicate.Client has no close(); its httpx client is a private lazy property.
        await client._async_client.aclose()

    # -- error mapping -------------------------------------------------------------------

    def _http_failure(self, exc: BaseException) -> HttpFailure | None:
        if isinstance(exc, _RetryableStatus):
            return exc.failure
        if isinstance(exc, ReplicateError) and exc.status is not None:
            # The library drops the headers, so no Retry-After; the statuses that carry
            # one come through `_RetryableStatus` instead.
            return HttpFailure(exc.status, exc.detail or exc.title or "")
        return None


def _listing(cursor: Any) -> Callable[[replicate.Client], Awaitable[Page[Prediction]]]:
    """The call that lists the page of predictions at `cursor` (`...`: the newest)."""
    return lambda client: client.predictions.async_list(cursor)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


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
