"""A fake of fal's queue API, as fal-client speaks it.

Endpoints (APP is `owner/alias[/subpath]`; request URLs drop the subpath, as fal's do):

    POST /APP                               submit -> request_id + status/response/cancel URLs
    GET  /owner/alias/requests/{id}/status  IN_QUEUE | IN_PROGRESS | COMPLETED (+error)
    GET  /owner/alias/requests/{id}         result: {"audio": {...}} or {"audio_file": {...}}
    PUT  /owner/alias/requests/{id}/cancel  202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED
    GET  /files/{id}.wav                    the audio (no auth, like fal's CDN)
    GET  /.well-known/jwks.json             the ED25519 keys its webhooks are signed with

A submit with `?fal_webhook=<url>` gets a signed POST of the outcome there when the job
ends (tests/fakes/webhooks.py).

Every API call needs `Authorization: Key <key>`; anything else gets 401. Status bodies
always carry `logs`, which fal-client indexes unconditionally.

Accounts: `key` is ours; `add_account` makes another customer's key (an attacker's). A
request belongs to the account that submitted it: any other key is told 404, as fal
does, and its webhook names the owner's user id, signed with fal's one set of keys.

Scriptable stages: submit, poll, result, cancel, download.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import FakeJob, FakeServer, json_error
from tests.fakes.webhooks import FalSigner, WebhookSender


class FalFake(FakeServer):
    stages = frozenset({"submit", "poll", "result", "cancel", "download"})

    def __init__(self, *, key: str = "test-key", sample_rate: int = 16_000) -> None:
        super().__init__(key=key, sample_rate=sample_rate)
        self.signer = FalSigner()
        self.webhooks = WebhookSender(self.signer)
        self.jwks_fetches = 0
        # Authorization header -> the account's user id; request id -> its owner's;
        # each account's deliveries go out through its own sender.
        self.accounts = {f"Key {key}": self.signer.user_id}
        self.owners: dict[str, str] = {}
        self.senders: dict[str, WebhookSender] = {self.signer.user_id: self.webhooks}

    def add_account(self, key: str) -> str:
        """Another fal customer, with their own key; returns their user id."""
        signer = self.signer.for_user(f"user-other-{len(self.accounts)}")
        self.accounts[f"Key {key}"] = signer.user_id
        self.senders[signer.user_id] = WebhookSender(signer)
        return signer.user_id

    def _owner(self, request: Request) -> str:
        return self.accounts[request.headers["authorization"]]

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    @property
    def webhooks_sent(self) -> int:
        return self.webhooks.sent

    def routes(self) -> list[Route]:
        return [
            Route("/.well-known/jwks.json", self._jwks, methods=["GET"]),
            Route("/files/{name}", self.serve_file, methods=["GET"]),
            Route("/{owner}/{alias}/requests/{rid}/status", self._status, methods=["GET"]),
            Route("/{owner}/{alias}/requests/{rid}/cancel", self._cancel, methods=["PUT"]),
            Route("/{owner}/{alias}/requests/{rid}", self._result, methods=["GET"]),
            Route("/{app:path}", self._submit, methods=["POST"]),
        ]

    # -- helpers ---------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if request.headers.get("authorization") in self.accounts:
            return True
        self.auth_failures += 1
        return False

    def _urls(self, request: Request, job: FakeJob) -> dict[str, str]:
        owner, alias = job.app.split("/")[:2]
        base = f"{self.base(request)}/{owner}/{alias}/requests/{job.id}"
        return {
            "request_id": job.id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def _job(self, request: Request) -> FakeJob | None:
        params = request.path_params
        job = self.jobs.get(params["rid"])
        if job is None or not job.app.startswith(f"{params['owner']}/{params['alias']}"):
            return None
        if self.owners.get(job.id, self.signer.user_id) != self._owner(request):
            return None  # another account's request: fal says it does not exist
        return job

    @staticmethod
    def _unauthorized() -> Response:
        return json_error(401, "No user found for Key ID and Secret")

    # -- endpoints -------------------------------------------------------------------

    async def _submit(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.submit_attempts += 1
        if (failure := await self.scripted("submit")) is not None:
            return failure
        app = request.path_params["app"].strip("/")
        if app.count("/") < 1:
            return json_error(404, f"application {app!r} not found")
        try:
            payload: Any = await request.json()
        except ValueError:
            return json_error(422, "body is not JSON")
        if not isinstance(payload, dict) or not payload.get("prompt"):
            missing = [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]
            return JSONResponse({"detail": missing}, status_code=422)
        job = self.new_job(app, payload)
        owner = self._owner(request)
        self.owners[job.id] = owner
        if webhook := request.query_params.get("fal_webhook"):
            sender = self.senders[owner]
            sender.schedule(job, webhook, lambda: self._webhook_body(request, job))
        return await self.answer(
            "submit", JSONResponse({**self._urls(request, job), "queue_position": 0})
        )

    async def _status(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.polls += 1
        if (failure := await self.scripted("poll")) is not None:
            return failure
        job = self._job(request)
        if job is None:
            return json_error(404, "Request not found")
        n = job.polls
        phase = job.advance()
        body: dict[str, Any] = {**self._urls(request, job), "logs": None}
        if phase == "queued":
            body.update(status="IN_QUEUE", queue_position=job.spec.queued_polls - n - 1)
        elif phase == "running":
            body.update(status="IN_PROGRESS", logs=[])
        else:
            body.update(status="COMPLETED", logs=[], metrics={"inference_time": 0.1})
            if phase == "failed":
                body.update(error=job.spec.fail, error_type="runner_server_error")
            elif phase == "cancelled":
                body.update(error="Request was cancelled", error_type="request_cancelled")
        return JSONResponse(body)

    async def _result(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.results += 1
        if (failure := await self.scripted("result")) is not None:
            return failure
        job = self._job(request)
        if job is None:
            return json_error(404, "Request not found")
        phase = job.phase()
        if phase in ("queued", "running"):
            return json_error(400, "Request is still in progress")
        if phase == "cancelled":
            return json_error(400, "Request was cancelled")
        if phase == "failed":
            return json_error(500, job.spec.fail or "failed")
        # Stable Audio names its output `audio_file`; MiniMax and most others `audio`.
        key = "audio_file" if "stable-audio" in job.app else "audio"
        file = {
            "url": self.audio_url(request, job),
            "content_type": "audio/wav",
            "file_name": f"{job.id}.wav",
        }
        return JSONResponse({key: file})

    async def _cancel(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._unauthorized()
        self.cancels += 1
        self.cancelled_ids.append(request.path_params["rid"])
        if (failure := await self.scripted("cancel")) is not None:
            return failure
        job = self._job(request)
        if job is None:
            return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
        if job.done:
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        job.cancelled = True
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)

    # -- webhooks --------------------------------------------------------------------

    async def _jwks(self, request: Request) -> Response:
        self.jwks_fetches += 1
        return JSONResponse(self.signer.jwks())

    def _webhook_body(self, request: Request, job: FakeJob) -> dict[str, Any]:
        """What fal posts when a request ends: the result as `payload`, or the error."""
        body: dict[str, Any] = {"request_id": job.id, "gateway_request_id": job.id}
        phase = job.phase()
        if phase == "succeeded":
            key = "audio_file" if "stable-audio" in job.app else "audio"
            file = {
                "url": self.audio_url(request, job),
                "content_type": "audio/wav",
                "file_name": f"{job.id}.wav",
            }
            return {**body, "status": "OK", "payload": {key: file}}
        error = "Request was cancelled" if phase == "cancelled" else job.spec.fail or "failed"
        return {**body, "status": "ERROR", "error": error, "payload": {"detail": error}}
