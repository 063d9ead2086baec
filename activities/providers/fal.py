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
* Status calls use a fixed 120 s read timeout, so every library call is also bounded by
  `HostedProvider._call`.
* `result()` polls status until COMPLETED before fetching, so call it only once poll has
  said the job succeeded (the MusicProvider contract already guarantees that).
* The request URLs drop the model's subpath: `fal-ai/minimax-music/v2` is submitted to
  `<queue>/fal-ai/minimax-music/v2` but followed at `<queue>/fal-ai/minimax-music/requests/<id>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fal_client
import fal_client.client as fal_http
from pydantic import SecretStr

from activities.providers._http import DownloadRules
from activities.providers.base import JobState, PollResult, ProviderError
from activities.providers.hosted import HostedModel, HostedProvider, HttpFailure, SubmitCall
from core.contracts import ErrorCode, Submission
from core.settings import Settings

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


def _configure_fal_client(queue_url: str) -> None:
    """Point fal-client at our queue URL and turn off its own retries (see module doc).

    Both are process-wide module globals, so every FalProvider in one process shares one
    queue URL; the worker builds them all from the same setting.
    """
    fal_http.QUEUE_URL_FORMAT = queue_url if queue_url.endswith("/") else queue_url + "/"
    fal_http.MAX_ATTEMPTS = 1


class FalProvider(HostedProvider[fal_client.AsyncClient]):
    name = "fal"
    display_name = "fal"
    key_name = "FAL_KEY"
    # fal answers a cancel of a finished or unknown request with one of these.
    cancel_noop_statuses = frozenset({400, 404, 409, 410})

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
        downloads: DownloadRules | None = None,
    ) -> None:
        super().__init__(
            key=key,
            vocals_model=vocals_model,
            instrumental_model=instrumental_model,
            models=models,
            request_timeout_s=request_timeout_s,
            download_timeout_s=download_timeout_s,
            downloads=downloads,
        )
        self._queue_url = queue_url if queue_url.endswith("/") else queue_url + "/"
        _configure_fal_client(queue_url)

    @classmethod
    def _settings_values(cls, settings: Settings) -> dict[str, Any]:
        return {
            "key": settings.fal_key,
            "queue_url": settings.fal_queue_url,
            "vocals_model": settings.fal_vocals_model,
            "instrumental_model": settings.fal_instrumental_model,
        }

    # -- endpoints and payloads ----------------------------------------------------------

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

    async def poll(self, submission: Submission) -> PollResult:
        status = await self._call(
            "status", lambda client: client.status(self._app(submission), submission.run_id)
        )
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

    async def _audio_url(self, submission: Submission) -> tuple[str | None, str | None]:
        result = await self._call(
            "result", lambda client: client.result(self._app(submission), submission.run_id)
        )
        return _find_audio(result)

    async def _cancel_job(self, client: fal_client.AsyncClient, submission: Submission) -> None:
        await client.cancel(self._app(submission), submission.run_id)

    async def _probe(self, client: fal_client.AsyncClient) -> None:
        await client.status(self._vocals_model, _PROBE_REQUEST_ID)

    def _probe_proves_key(self, status: int) -> bool:
        # Past authentication fal answers "no such request"; 5xx and 429 prove nothing.
        return status < 500 and status != 429

    def _app(self, submission: Submission) -> str:
        return submission.model or self._model(submission.request)

    # -- the client library --------------------------------------------------------------

    def _new_client(self) -> fal_client.AsyncClient:
        return fal_client.AsyncClient(key=self._secret(), default_timeout=self._request_timeout_s)

    def _client(self) -> fal_client.AsyncClient:
        # Another FalProvider may have repointed the process-wide queue URL since.
        _configure_fal_client(self._queue_url)
        return super()._client()

    async def _close_client(self, client: fal_client.AsyncClient) -> None:
        # fal-client has no close(); its httpx client sits behind a private cached property.
        http = await client._client
        await http.aclose()

    # -- error mapping -------------------------------------------------------------------

    def _http_failure(self, exc: BaseException) -> HttpFailure | None:
        if isinstance(exc, fal_client.FalClientHTTPError):
            return HttpFailure(
                exc.status_code, exc.message, exc.response.headers.get("retry-after")
            )
        return None


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
