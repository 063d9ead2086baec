"""Which worker-deployment version this code is: the deployment name and the build id.

Every worker runs as one version of one Temporal worker deployment (Worker Versioning).
Track workflows are pinned to the version that started them, so a workflow change ships
as a new build id instead of a `workflow.patched` branch: runs already in flight finish
on the old version's workers, new runs start on the new one.

The build id is the package version plus a hash of the source a worker runs (workflows,
activities, domain, engines, core, worker.py). A hash of the content rather than the git
commit: it is the same in a container image without `.git` and in a dirty checkout, and
two commits that change nothing a worker runs (docs, tests) need no rollout.
WORKER_BUILD_ID overrides it (a release pipeline's own id).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from temporalio.common import WorkerDeploymentVersion
from temporalio.worker import WorkerDeploymentConfig

from core.settings import Settings, package_version

# The code a worker process runs, relative to the project (or site-packages) root.
WORKER_PACKAGES = ("workflows", "activities", "domain", "engines", "core")
WORKER_MODULES = ("worker.py",)
HASH_CHARS = 12
_ROOT = Path(__file__).resolve().parents[1]


def worker_sources(root: Path = _ROOT) -> list[Path]:
    """The worker's source files, in a stable order."""
    files = [root / name for name in WORKER_MODULES if (root / name).is_file()]
    for package in WORKER_PACKAGES:
        files.extend(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def source_hash(root: Path = _ROOT) -> str:
    """A short hash of the worker's source: names and contents, so a rename counts too."""
    digest = hashlib.sha256()
    for path in worker_sources(root):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:HASH_CHARS]


@lru_cache
def computed_build_id() -> str:
    return f"{package_version()}-{source_hash()}"


def build_id(settings: Settings) -> str:
    return settings.worker_build_id or computed_build_id()


def deployment_version(settings: Settings) -> WorkerDeploymentVersion:
    """This process's version of the worker deployment."""
    return WorkerDeploymentVersion(
        deployment_name=settings.worker_deployment_name, build_id=build_id(settings)
    )


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """For every Worker of a process: the track and mastering queues' workers are one
    version, so a pinned track's mastering runs on the version that started the track.
    None runs unversioned (WORKER_VERSIONING=off)."""
    if not settings.worker_versioning:
        return None
    # No default behaviour: a workflow that does not name its own fails the worker's start.
    return WorkerDeploymentConfig(version=deployment_version(settings), use_worker_versioning=True)
