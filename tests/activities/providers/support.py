"""Requests and steps shared by the hosted provider tests."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from activities.providers._http import DownloadRules
from activities.providers.base import JobState, PollResult
from activities.providers.hosted import HostedProvider
from core.contracts import GenerationRequest, Submission
from core.egress import EgressPolicy

Provider = HostedProvider[Any]
# The fakes serve their audio on loopback, which downloads refuse unless named: named here.
FAKE_DOWNLOADS = DownloadRules(egress=EgressPolicy.of(["127.0.0.1"]))

INSTRUMENTAL = GenerationRequest(prompt="warm lo-fi piano", duration_s=5, seed=42)
VOCALS = GenerationRequest(
    prompt="indie pop, bright", duration_s=30, has_vocals=True, lyrics="[Verse]\nla la la"
)
REQUESTS = {"instrumental": INSTRUMENTAL, "vocals": VOCALS}


async def submit(provider: Provider, request: GenerationRequest) -> Submission:
    """Submit `request` and keep what a workflow would: the id, model and URLs."""
    run_id, urls = await provider.submit(request, track_id=str(uuid.uuid4()))
    return Submission(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        provider=provider.name,
        model=provider.model_for(request),
        run_id=run_id,
        request=request,
        urls=urls,
    )


async def poll_to_end(provider: Provider, sub: Submission) -> tuple[PollResult, list[PollResult]]:
    """Poll until the job ends; its last result and every result seen."""
    seen: list[PollResult] = []
    for _ in range(50):
        result = await provider.poll(sub)
        seen.append(result)
        if result.state not in (JobState.QUEUED, JobState.RUNNING):
            return result, seen
    raise AssertionError(f"job never finished: {[r.state for r in seen]}")


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())
