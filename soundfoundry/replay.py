"""Replay saved or live workflow histories against the current workflow code.

A replay that raises means the code can no longer continue runs recorded by the version
that made them: the change ships as a new worker deployment build id (CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.track import TrackWorkflow


@dataclass
class ReplayOutcome:
    workflow_id: str
    error: str | None


def replayer() -> Replayer:
    return Replayer(workflows=[TrackWorkflow], data_converter=pydantic_data_converter)


async def replay_files(paths: list[Path]) -> list[ReplayOutcome]:
    outcomes = []
    for path in paths:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        outcomes.append(await replay_history(history))
    return outcomes


async def replay_history(history: WorkflowHistory) -> ReplayOutcome:
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    error = (
        f"{type(result.replay_failure).__name__}: {result.replay_failure}"
        if result.replay_failure
        else None
    )
    return ReplayOutcome(history.workflow_id, error)


async def replay_query(client: Client, query: str, limit: int) -> AsyncIterator[ReplayOutcome]:
    histories = client.list_workflows(query, limit=limit).map_histories()
    async for history in histories:
        yield await replay_history(history)
