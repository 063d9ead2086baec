"""Version B of the incompatible rollout (tests/e2e/test_rollout.py): the real
`soundfoundry worker`, running a TrackWorkflow with a step added in the middle.

The extra step (a timer before every submit) makes B's commands differ from any history
that version A recorded past its first submit: an A run replayed on B would fail with a
non-determinism error. Run as `python -m tests.e2e.rollout_variant`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import VersioningBehavior

# Passed through as workflows/track.py does: one copy of the contract types in and out
# of the sandbox, or the converter's Submission is not the workflow's.
with workflow.unsafe.imports_passed_through():
    from core.contracts import TRACK_WORKFLOW, TrackInput, TrackResult
from workflows.track import TrackWorkflow

# The timer's summary, so a test can tell which runs took B's path.
EXTRA_STEP = "rollout variant: a step added before submit"


@workflow.defn(name=TRACK_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class TrackWorkflowWithExtraStep(TrackWorkflow):
    @workflow.run
    async def run(self, track: TrackInput) -> TrackResult:
        return await super().run(track)

    async def _submit(self, *args: Any, **kwargs: Any) -> Any:
        await workflow.sleep(timedelta(milliseconds=50), summary=EXTRA_STEP)
        return await super()._submit(*args, **kwargs)


def main() -> None:
    import worker

    # build_worker registers whatever `worker.TrackWorkflow` is when it runs.
    worker.TrackWorkflow = TrackWorkflowWithExtraStep  # type: ignore[misc]
    worker.main()


if __name__ == "__main__":
    main()
