"""The build id a worker runs as: it changes exactly when the code a worker runs changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.common import VersioningBehavior
from temporalio.workflow import _Definition

from core.deployment import (
    WORKER_MODULES,
    WORKER_PACKAGES,
    build_id,
    computed_build_id,
    deployment_config,
    source_hash,
)
from core.settings import Settings, package_version
from workflows.provider_health import ProviderHealthWorkflow
from workflows.reconcile import ReconcileWorkflow
from workflows.track import TrackWorkflow

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    """A copy of the project's worker source and of something a worker does not run."""
    for package in WORKER_PACKAGES:
        shutil.copytree(
            PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for module in WORKER_MODULES:
        shutil.copy(PROJECT_ROOT / module, tmp_path / module)
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "routes.py").write_text("ROUTES = []\n")
    (tmp_path / "README.md").write_text("# SoundFoundry\n")
    return tmp_path


def test_the_build_id_follows_the_workers_source_and_nothing_else(source_tree: Path) -> None:
    before = source_hash(source_tree)
    assert before == source_hash(PROJECT_ROOT), "the copy hashes as the project does"

    # Docs, the API and stale bytecode are not what a worker runs: no new version.
    (source_tree / "README.md").write_text("# SoundFoundry, reworded\n")
    (source_tree / "api" / "routes.py").write_text("ROUTES = ['/x']\n")
    (source_tree / "workflows" / "__pycache__").mkdir()
    (source_tree / "workflows" / "__pycache__" / "track.cpython-311.pyc").write_bytes(b"\0")
    assert source_hash(source_tree) == before

    # One byte of a workflow, of an activity, or of worker.py: a new version.
    track = source_tree / "workflows" / "track.py"
    track.write_text(track.read_text() + "\n")
    changed = source_hash(source_tree)
    assert changed != before
    (source_tree / "worker.py").write_text((source_tree / "worker.py").read_text() + "#\n")
    assert source_hash(source_tree) != changed

    # A renamed module is a change even with the same bytes.
    renamed = source_hash(source_tree)
    (source_tree / "activities" / "health.py").rename(source_tree / "activities" / "health2.py")
    assert source_hash(source_tree) != renamed


def test_the_build_id_is_the_package_version_and_the_source_hash() -> None:
    assert computed_build_id() == f"{package_version()}-{source_hash()}"
    assert build_id(Settings()) == computed_build_id()
    assert build_id(Settings(worker_build_id="release-2026.12.07")) == "release-2026.12.07"


def test_every_worker_runs_as_a_version_of_the_named_deployment() -> None:
    config = deployment_config(Settings(worker_deployment_name="sf-prod", worker_build_id="b7"))
    assert config is not None and config.use_worker_versioning
    assert config.version.to_canonical_string() == "sf-prod.b7"
    # No default behaviour: a workflow that names none fails the worker's start.
    assert config.default_versioning_behavior is VersioningBehavior.UNSPECIFIED
    assert deployment_config(Settings(worker_versioning=False)) is None


def test_a_deployment_name_with_a_dot_is_refused() -> None:
    # Temporal writes a version as `<deployment>.<build id>`.
    with pytest.raises(ValidationError, match="worker_deployment_name"):
        Settings(worker_deployment_name="sound.foundry")


def test_tracks_are_pinned_and_the_short_scheduled_workflows_upgrade() -> None:
    def behaviour(cls: type) -> VersioningBehavior | None:
        return _Definition.must_from_class(cls).versioning_behavior

    assert behaviour(TrackWorkflow) is VersioningBehavior.PINNED
    assert behaviour(ReconcileWorkflow) is VersioningBehavior.AUTO_UPGRADE
    assert behaviour(ProviderHealthWorkflow) is VersioningBehavior.AUTO_UPGRADE
