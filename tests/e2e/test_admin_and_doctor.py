"""Operator tools: `soundfoundry doctor`, stuck jobs and bulk cancel (CLI and admin API)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Stack
from tests.services import PostgresCluster

SLOW = {"synth_pace": 1.0}


async def test_doctor_passes_on_a_healthy_stack(stack: Stack) -> None:
    done = await stack.cli("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("database", "temporal", "storage", "provider synth"):
        assert f"PASS  {name}" in done.stdout, done.stdout
    assert "migrations at head" in done.stdout
    assert "4 passed, 0 failed" in done.stdout


async def test_doctor_fails_clearly_and_keeps_secrets_out(
    stack: Stack, pg_cluster: PostgresCluster
) -> None:
    unmigrated = pg_cluster.create_database("doctor_unmigrated")
    done = await stack.cli(
        "doctor",
        DATABASE_URL=unmigrated,
        S3_BUCKET="no-such-bucket",
        MUSIC_PROVIDERS="fal,synth",
    )
    assert done.returncode == 1
    assert "FAIL  database" in done.stdout and "run migrate" in done.stdout
    assert "FAIL  storage" in done.stdout
    assert "FAIL  provider fal" in done.stdout and "unconfigured" in done.stdout
    assert "PASS  temporal" in done.stdout
    secret = stack.env["S3_SECRET_KEY"]
    assert secret not in done.stdout + done.stderr
    assert pg_cluster.password not in done.stdout + done.stderr


@pytest.mark.parametrize("stack_overrides", [SLOW])
async def test_admin_api_lists_stuck_jobs_and_cancels_by_filter(
    stack: Stack, stack_overrides: Any
) -> None:
    user_id, auth = await stack.user(credits=20)
    _, admin = await stack.user(admin=True)
    created = await stack.create_track(auth, duration_s=30)
    await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")

    for method, path, body in (
        ("GET", "/api/admin/jobs/stuck?minutes=0.001", None),
        ("POST", "/api/admin/jobs/cancel", {"provider": "synth"}),
    ):
        refused = await stack.http.request(method, path, json=body, headers=auth)
        assert refused.status_code == 403
        assert (await stack.http.request(method, path, json=body)).status_code == 401

    await asyncio.sleep(0.2)
    stuck = (await stack.http.get("/api/admin/jobs/stuck?minutes=0.001", headers=admin)).json()
    assert [job["job_id"] for job in stuck] == [created["job_id"]]
    assert stuck[0]["status"] == "RENDERING"
    recent = (await stack.http.get("/api/admin/jobs/stuck?minutes=60", headers=admin)).json()
    assert recent == []

    for bad_body, reason in (
        ({"query": "Provider='synth'"}, "no longer accepted"),
        ({}, "at least one of"),
        ({"provider": "nope"}, "unknown provider"),
        ({"status": "COMPLETE"}, "QUEUED"),
        ({"older_than_minutes": 0}, "greater than or equal to 1"),
    ):
        bad = await stack.http.post("/api/admin/jobs/cancel", json=bad_body, headers=admin)
        assert bad.status_code == 422 and reason in bad.text, (bad_body, bad.text)
    # Started just now: not older than a minute, so nothing matches.
    young = await stack.http.post(
        "/api/admin/jobs/cancel",
        json={"user_id": str(user_id), "older_than_minutes": 1},
        headers=admin,
    )
    assert young.status_code == 200 and young.json() == {"cancelled": []}
    response = await stack.http.post(
        "/api/admin/jobs/cancel",
        json={"user_id": str(user_id), "status": "RENDERING", "provider": "synth"},
        headers=admin,
    )
    assert response.status_code == 200
    assert response.json() == {"cancelled": [created["workflow_id"]]}
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "CANCELLED"
    assert await stack.credits(user_id) == 20


@pytest.mark.parametrize("stack_overrides", [SLOW])
async def test_admin_cli_stuck_and_bulk_cancel(stack: Stack, stack_overrides: Any) -> None:
    user_id, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=30)
    await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")
    await asyncio.sleep(0.2)

    stuck = await stack.cli("admin", "stuck", "--minutes", "0.001")
    assert stuck.returncode == 0, stuck.stderr
    assert created["workflow_id"] in stuck.stdout and "1 stuck job(s)" in stuck.stderr

    name = (await stack.http.get("/api/me", headers=auth)).json()["name"]
    cancel = await stack.cli(
        "admin", "cancel", "--user", name, "--status", "rendering", "--provider", "synth", "--yes"
    )
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.split() == [created["workflow_id"]]
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "CANCELLED"
    assert await stack.credits(user_id) == 20
