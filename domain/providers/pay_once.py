"""The pay-once policy: send, resolve, give up on and cancel paid submissions.

The generation activities (submit, cancel on every exit) and the reconciler's sweep (jobs
whose workflow ended without cleaning up) are thin adapters over this. The rules:

* a ledger row is committed before the request leaves, and a row that is not a proven
  rejection is never sent again: a later attempt resolves it instead;
* resolving looks, for a bounded window, for the run id a webhook recorded on the row or
  the provider's own listing shows; what stays unknown is AMBIGUOUS, counted and logged;
* every open row of a job nobody waits for is cancelled at its provider;
* nothing is sent for a job that is no longer active (cancelled, refunded, finished);
* a submission's token (which addresses its webhook) never enters the job log or an
  error message, which users read: rows are named by their id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import suppress
from datetime import UTC, datetime

from core.beating import beating
from core.contracts import (
    OPEN_SUBMISSION_STATES,
    ErrorCode,
    GenerationRequest,
    Step,
    Submission,
    SubmissionState,
    TrackInput,
)
from core.logging import get_logger
from core.metrics import count_ambiguous_submission, count_provider_cancel
from core.models import ProviderSubmission
from core.settings import Settings
from domain.providers.port import Beat, PaidProvider, ProviderError, Providers
from domain.tracks.jobs import JobStore
from domain.tracks.submissions import (
    WITH_RUN_ID,
    JobNotActive,
    ProviderAtCapacity,
    SubmissionLedger,
)
from domain.webhooks.incoming import webhook_url

log = get_logger("soundfoundry.submissions")

Heartbeat = Beat
# How often an unresolved submission is looked for while its window is open.
_RESOLVE_EVERY_S = 0.5


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class ProviderJobs:
    def __init__(
        self,
        ledger: SubmissionLedger,
        store: JobStore,
        providers: Providers,
        settings: Settings,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.providers = providers
        self.settings = settings
        self._capacity_locks: dict[str, asyncio.Lock] = {}

    def max_in_flight(self, provider: str) -> int:
        """The provider's in-flight cap from settings (0: none; the synth has none)."""
        return int(getattr(self.settings, f"{provider}_max_in_flight", 0))

    # -- submit ----------------------------------------------------------------------

    async def submit(
        self,
        track: TrackInput,
        provider: PaidProvider,
        *,
        number: int,
        max_paid: int,
        resolve_window_s: float,
        heartbeat: Heartbeat,
        workflow_run_id: str | None = None,
        already_waiting: bool = False,
    ) -> Submission:
        """One paid job for this link of the chain, however often this is called."""
        request = track.request
        model = provider.model_for(request)
        existing = await self.ledger.for_job(track.job_id)
        mine = [
            r
            for r in existing
            if (r.provider, r.number, r.workflow_run_id) == (provider.name, number, workflow_run_id)
        ]
        # Per workflow run: an operator's reset starts the count again.
        paid = sum(
            1
            for r in existing
            if r.state.paid and r.workflow_run_id == workflow_run_id and r not in mine
        )
        if not mine and paid >= max_paid:
            raise ProviderError(
                ErrorCode.SUBMISSION_CAP,
                f"submission cap of {max_paid} paid submissions reached",
            )
        limit = self.max_in_flight(provider.name)
        try:
            # One check-and-insert at a time in this process; across processes the
            # ledger serialises them (an advisory lock on Postgres).
            async with self._capacity_locks.setdefault(provider.name, asyncio.Lock()):
                begun = await self.ledger.begin(
                    job_id=track.job_id,
                    track_id=track.track_id,
                    provider=provider.name,
                    model=model,
                    number=number,
                    workflow_run_id=workflow_run_id,
                    max_in_flight=limit,
                )
        except JobNotActive:
            raise ProviderError(
                ErrorCode.JOB_MOVED, "the job has ended; nothing is sent for it"
            ) from None
        except ProviderAtCapacity as exc:
            if not already_waiting:
                await self.store.set_step(track.job_id, Step.PROVIDER_QUEUE, 0.1)
            raise ProviderError(
                ErrorCode.PROVIDER_BUSY,
                f"Waiting for {provider.name} capacity ({exc.in_flight} of {exc.limit} "
                "jobs in flight)",
                quiet=already_waiting,
            ) from None
        row = begun.row
        if not begun.may_send:
            return await self._settle_earlier_attempt(
                row, provider, request, resolve_window_s, heartbeat
            )
        try:
            run_id, urls = await self._send_once(provider, track, row, heartbeat)
        except ProviderError as exc:
            # A provider's error may quote the request, webhook URL and all.
            exc.message = exc.message.replace(row.token, "[token]")
            exc.args = (exc.message,)
            if not exc.sent:
                # Refused before or on arrival: nothing was created, a retry may send.
                await self.ledger.set_state(row.id, SubmissionState.REJECTED, exc.message)
                raise
            await self.store.add_event(
                track.job_id,
                "submit_unanswered",
                f"{provider.name} took the request but its answer was lost ({exc.message}); "
                "looking for the job instead of sending again",
                level="warning",
                provider=provider.name,
                data={"submission_id": str(row.id)},
            )
            return await self._settle_earlier_attempt(
                row, provider, request, resolve_window_s, heartbeat
            )
        resolution = await self.ledger.accept(row.id, run_id, urls)
        return self.submission(resolution.row, request, webhook=self._expects_webhook(provider))

    async def _send_once(
        self,
        provider: PaidProvider,
        track: TrackInput,
        row: ProviderSubmission,
        heartbeat: Heartbeat,
    ) -> tuple[str, dict[str, str]]:
        """The one request, heartbeating while it is out.

        A cancel that arrives meanwhile does not cut the request short: its outcome is
        recorded first, so the cancel path finds a run id to stop instead of a mystery.
        """
        send = asyncio.ensure_future(
            provider.submit(
                track.request,
                track_id=str(track.track_id),
                token=row.token,
                webhook_url=self._webhook_url(provider, row.token),
            )
        )
        async with beating(heartbeat):
            try:
                return await asyncio.shield(send)
            except asyncio.CancelledError:
                with suppress(Exception):
                    run_id, urls = await send
                    await self.ledger.accept(row.id, run_id, urls)
                raise

    async def _settle_earlier_attempt(
        self,
        row: ProviderSubmission,
        provider: PaidProvider,
        request: GenerationRequest,
        window_s: float,
        heartbeat: Heartbeat,
    ) -> Submission:
        """An earlier attempt sent (or may have sent) this row: find its job, never resend."""
        webhook = self._expects_webhook(provider)
        if row.state in WITH_RUN_ID or row.state is SubmissionState.FINISHED:
            return self.submission(row, request, webhook=webhook)
        if row.state is SubmissionState.CANCELLED:
            raise ProviderError(ErrorCode.JOB_CANCELLED, f"{provider.name} job was cancelled")
        found = await self.resolve(row, provider, request, window_s, heartbeat)
        if found is not None:
            return self.submission(found, request, webhook=webhook)
        raise ProviderError(
            ErrorCode.AMBIGUOUS,
            f"{provider.name} may have accepted the submit (submission {row.id}) but no job "
            f"could be found within {window_s:g} s; it is never sent there again",
        )

    # -- resolve ---------------------------------------------------------------------

    async def resolve(
        self,
        row: ProviderSubmission,
        provider: PaidProvider,
        request: GenerationRequest,
        window_s: float,
        heartbeat: Heartbeat,
    ) -> ProviderSubmission | None:
        """The row with its run id once a webhook or the provider's listing shows it;
        None (and the row AMBIGUOUS) if neither does within `window_s`."""
        deadline = time.monotonic() + window_s
        while True:
            current = await self.ledger.get(row.id)
            assert current is not None
            if current.run_id is not None:
                return current
            if current.state not in (SubmissionState.SENDING, SubmissionState.AMBIGUOUS):
                return None
            run_id = await self._look_up(current, provider, request)
            if run_id is not None:
                resolution = await self.ledger.accept(row.id, run_id, {}, via="listing")
                await self.store.add_event(
                    row.job_id,
                    "submit_resolved",
                    f"Found {provider.name} job {run_id} for the unanswered submit",
                    provider=provider.name,
                    provider_run_id=run_id,
                    data={"submission_id": str(row.id), "via": "listing"},
                )
                return resolution.row
            if time.monotonic() >= deadline:
                break
            heartbeat()
            await asyncio.sleep(_RESOLVE_EVERY_S)
        if await self.ledger.set_state(
            row.id,
            SubmissionState.AMBIGUOUS,
            "no answer, no webhook, not in the provider's listing",
            only_from=(SubmissionState.SENDING,),
        ):
            count_ambiguous_submission(provider.name)
            message = (
                f"Submit to {provider.name} is ambiguous: it may have created a job we cannot "
                f"see (submission {row.id}); it will not be sent there again"
            )
            log.error(message, provider=provider.name, job_id=str(row.job_id))
            await self.store.add_event(
                row.job_id,
                "submit_ambiguous",
                message,
                level="error",
                provider=provider.name,
                error_code=ErrorCode.AMBIGUOUS.value,
                data={"submission_id": str(row.id)},
            )
        return None

    async def _look_up(
        self, row: ProviderSubmission, provider: PaidProvider, request: GenerationRequest
    ) -> str | None:
        since = _aware(row.created_at)
        try:
            return await provider.find_submission(
                request,
                since=since,
                exclude=await self.ledger.claimed_run_ids(provider.name, since),
            )
        except ProviderError as exc:
            log.warning("listing failed", provider=provider.name, error=exc.message)
            return None

    # -- cancel ----------------------------------------------------------------------

    async def cancel_open(
        self,
        job_id: uuid.UUID,
        request: GenerationRequest,
        *,
        reason: str,
        window_s: float,
        heartbeat: Heartbeat,
        resolve_unknown: bool = True,
    ) -> list[str]:
        """Stop every job of this track still open at a provider; the run ids stopped.

        With `resolve_unknown`, a row without a run id (a submit in flight, or one whose
        worker died) is given the resolve window to show it first; without, such rows
        are left to the reconciler's sweep once the track has ended.
        """
        stopped: list[str] = []
        for row in await self.ledger.open_for_job(job_id):
            provider = self.providers.get(row.provider)
            if row.run_id is None:
                if not resolve_unknown:
                    continue
                found = await self.resolve(row, provider, request, window_s, heartbeat)
                if found is None:
                    continue
                row = found
            if await self.cancel_row(row, provider, request, reason):
                stopped.append(row.run_id or "")
            heartbeat()
        return stopped

    async def cancel_row(
        self,
        row: ProviderSubmission,
        provider: PaidProvider,
        request: GenerationRequest,
        reason: str,
    ) -> bool:
        assert row.run_id is not None
        await provider.cancel(self.submission(row, request))
        if not await self.ledger.set_state(
            row.id, SubmissionState.CANCELLED, only_from=tuple(OPEN_SUBMISSION_STATES)
        ):
            return False
        count_provider_cancel(provider.name, reason)
        await self.store.add_event(
            row.job_id,
            "provider_cancelled",
            f"Cancelled {provider.name} job {row.run_id} ({reason})",
            provider=provider.name,
            provider_run_id=row.run_id,
            data={"submission_id": str(row.id), "reason": reason},
        )
        log.info(
            "provider job cancelled",
            provider=provider.name,
            provider_run_id=row.run_id,
            job_id=str(row.job_id),
            reason=reason,
        )
        return True

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def submission(
        row: ProviderSubmission, request: GenerationRequest, *, webhook: bool = False
    ) -> Submission:
        assert row.run_id is not None
        return Submission(
            track_id=row.track_id,
            job_id=row.job_id,
            provider=row.provider,
            model=row.model,
            run_id=row.run_id,
            request=request,
            urls=row.urls or {},
            token=row.token,
            webhook=webhook,
        )

    def _expects_webhook(self, provider: PaidProvider) -> bool:
        # Every send of a row carries the same URL (_webhook_url), so a resent or
        # resolved row expects its webhook just as the first send did.
        return self.settings.provider_webhooks_enabled and provider.remote

    def _webhook_url(self, provider: PaidProvider, token: str) -> str | None:
        if not self._expects_webhook(provider):
            return None
        return webhook_url(self.settings.public_base_url, provider.name, token)
