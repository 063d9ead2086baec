"""A fake of Replicate's HTTP API (v1), as the `replicate` 1.x client speaks it.

    POST /v1/models/{owner}/{name}/predictions  create for an official model -> 201 prediction
    POST /v1/predictions                        create for {"version": ...}  -> 201 prediction
    GET  /v1/predictions/{id}                   starting|processing|succeeded|failed|canceled
    POST /v1/predictions/{id}/cancel            the prediction, canceled unless already finished
    GET  /v1/account                            the token's account (a cheap authenticated call)
    GET  /files/{id}.wav                        the audio (no auth, like replicate.delivery)

Every API call needs `Authorization: Bearer <token>`; anything else gets 401 with a
problem-details body. Prediction objects carry `urls.get` / `urls.cancel`, and while
processing their logs end in a tqdm-style bar the client parses into `progress`.

    GET  /v1/predictions                        the account's predictions, newest first
    GET  /v1/webhooks/default/secret            {"key": "whsec_..."}: what webhooks are signed with

A create body with `webhook` (and `webhook_events_filter` naming "completed", or none) gets
the final prediction POSTed there, signed per Standard Webhooks, when the job ends
(tests/fakes/webhooks.py).

Scriptable stages: submit, poll, cancel, account, download, list.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import FakeJob, FakeServer, json_error
from tests.fakes.webhooks import StandardWebhookSigner, WebhookSender

_STATUS = {
    "queued": "starting",
    "running": "processing",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "canceled",
}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class ReplicateFake(FakeServer):
    stages = frozenset({"submit", "poll", "cancel", "account", "download", "list"})
    page_size = 100

    def __init__(self, *, key: str = "r8_test-token", sample_rate: int = 16_000) -> None:
        super().__init__(key=key, sample_rate=sample_rate)
        self.versions: dict[str, str] = {}  # job id -> version it was created with
        self.listings = 0
        self.signer = StandardWebhookSigner()
        self.webhooks = WebhookSender(self.signer)
        self.secret_fetches = 0

    @property
    def webhook_secret(self) -> str:
        return self.signer.secret

    @property
    def webhooks_sent(self) -> int:
        return self.webhooks.sent

    def routes(self) -> list[Route]:
        return [
            Route("/files/{name}", self.serve_file, methods=["GET"]),
            Route("/v1/account", self._account, methods=["GET"]),
            Route("/v1/webhooks/default/secret", self._webhook_secret, methods=["GET"]),
            Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
            Route("/v1/predictions", self._create, methods=["POST"]),
            Route("/v1/predictions", self._list, methods=["GET"]),
            Route("/v1/predictions/{pid}", self._get, methods=["GET"]),
            Route("/v1/predictions/{pid}/cancel", self._cancel, methods=["POST"]),
        ]

    # -- helpers ---------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if request.headers.get("authorization") == f"Bearer {self.key}":
            return True
        self.auth_failures += 1
        return False

    @staticmethod
    def _unauthorized() -> Response:
        return JSONResponse(
            {
                "title": "Unauthenticated",
                "detail": "You did not pass a valid authentication token",
                "status": 401,
            },
            status_code=401,
        )

    def _prediction(self, request: Request, job: FakeJob, phase: str, n: int) -> dict[str, Any]:
        base = self.base(request)
        logs = ""
        if phase == "running":
            total = job.spec.running_polls + 1
            done = min(max(n - job.spec.queued_polls + 1, 1), total - 1)
            pct = round(100 * done / total)
            logs = f"generating\n{pct:3d}%|{'#' * (pct // 10):<10}| {done}/{total} [00:01<00:01]"
        output: Any = None
        if phase == "succeeded":
            url = self.audio_url(request, job)
            output = [url] if job.spec.output_list else url
        finished = phase in ("succeeded", "failed", "cancelled")
        return {
            "id": job.id,
            "model": job.app,
            "version": self.versions.get(job.id, "hidden"),
            "input": job.input,
            "logs": logs,
            "output": output,
            "data_removed": False,
            "error": job.spec.fail if phase == "failed" else None,
            "status": _STATUS[phase],
            "source": "api",
            "created_at": job.created_at.isoformat().replace("+00:00", "Z"),
            "started_at": None if phase == "queued" else _now(),
            "completed_at": _now() if finished else None,
            "urls": {
                "get": f"{base}/v1/predictions/{job.id}",
                "cancel": f"{base}/v1/predictions/{job.id}/cancel",
                "web": f"{base}/p/{job.id}",
            },
            "metrics": {"predict_time": 0.1} if finished else {},
        }

    # -- endpoints -------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.submit_attempts += 1
        if (failure := await self.scripted("submit")) is not None:
            return failure
        try:
            body: Any = await request.json()
        except ValueError:
            return json_error(400, "body is not JSON")
        payload = body.get("input") if isinstance(body, dict) else None
        if not isinstance(payload, dict) or not (payload.get("prompt") or payload.get("lyrics")):
            return JSONResponse(
                {
                    "title": "Input validation failed",
                    "detail": "- input: prompt is required",
                    "status": 422,
                    "invalid_fields": [{"type": "required", "field": "input", "description": ""}],
                },
                status_code=422,
            )
        params = request.path_params
        version = None
        if "owner" in params:
            app = f"{params['owner']}/{params['name']}"
        else:
            version = str(body.get("version") or "")
            if not version:
                return json_error(422, "version is required")
            app = version.split(":")[0] if ":" in version else "unknown/versioned"
        job = self.new_job(app, payload)
        if version is not None:
            self.versions[job.id] = version.split(":")[-1]
        self._schedule_webhook(request, job, body)
        return await self.answer(
            "submit", JSONResponse(self._prediction(request, job, "queued", 0), status_code=201)
        )

    async def _list(self, request: Request) -> Response:
        """The account's predictions, newest first, a page at a time (`cursor` = offset)."""
        if not self._authorized(request):
            return self._unauthorized()
        self.listings += 1
        if (failure := await self.scripted("list")) is not None:
            return failure
        offset = int(request.query_params.get("cursor") or 0)
        newest_first = sorted(self.jobs.values(), key=lambda j: j.submitted_at, reverse=True)
        page = newest_first[offset : offset + self.page_size]
        more = offset + self.page_size < len(newest_first)
        base = f"{self.base(request)}/v1/predictions"
        return JSONResponse(
            {
                "previous": None,
                "next": f"{base}?cursor={offset + self.page_size}" if more else None,
                "results": [self._prediction(request, job, job.phase(), job.polls) for job in page],
            }
        )

    async def _get(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.polls += 1
        if (failure := await self.scripted("poll")) is not None:
            return failure
        job = self.jobs.get(request.path_params["pid"])
        if job is None:
            return json_error(404, "Not found.")
        n = job.polls
        phase = job.advance()
        return await self.answer("poll", JSONResponse(self._prediction(request, job, phase, n)))

    async def _cancel(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.cancels += 1
        self.cancelled_ids.append(request.path_params["pid"])
        if (failure := await self.scripted("cancel")) is not None:
            return failure
        job = self.jobs.get(request.path_params["pid"])
        if job is None:
            return json_error(404, "Not found.")
        if not job.done:
            job.cancelled = True
        return JSONResponse(self._prediction(request, job, job.phase(), job.polls))

    async def _account(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        if (failure := await self.scripted("account")) is not None:
            return failure
        return JSONResponse(
            {"type": "user", "username": "fake", "name": "Fake User", "github_url": None}
        )

    # -- webhooks --------------------------------------------------------------------

    def _schedule_webhook(self, request: Request, job: FakeJob, body: dict[str, Any]) -> None:
        url = body.get("webhook")
        events = body.get("webhook_events_filter")
        # This fake only ever sends "completed"; Replicate's default filter includes it.
        if isinstance(url, str) and url and (events is None or "completed" in events):
            self.webhooks.schedule(
                job, url, lambda: self._prediction(request, job, job.phase(), job.polls)
            )

    async def _webhook_secret(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.secret_fetches += 1
        return JSONResponse({"key": self.signer.secret})
