"""Credits are reserved once, kept on success, refunded on failure and cancel; users see
only their own tracks and jobs."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import func, select

from core.models import Job, Plan, Track
from tests.conftest import Stack


async def test_short_balance_is_402_and_starts_nothing(stack: Stack) -> None:
    user_id, auth = await stack.user(credits=4)
    response = await stack.http.post(
        "/api/tracks", json={"prompt": "Too long for my wallet", "duration_s": 30}, headers=auth
    )
    assert response.status_code == 402
    assert "needs 5 credits" in response.json()["detail"]
    assert "balance is 4" in response.json()["detail"]
    assert await stack.credits(user_id) == 4
    async with stack.store.sessions() as session:
        assert (await session.exec(select(func.count()).select_from(Track))).one() == 0
        assert (await session.exec(select(func.count()).select_from(Job))).one() == 0
    count = await stack.temporal.client.count_workflows(
        f"TaskQueue = '{stack.settings.task_queue}'"
    )
    assert count.count == 0


@pytest.mark.parametrize("stack_overrides", [{"music_providers": ["fal"]}])
async def test_failed_job_is_refunded_with_a_reason(stack: Stack, stack_overrides: Any) -> None:
    """With no provider able to serve the track, the job fails and the credits come back."""
    user_id, auth = await stack.user(credits=10)
    created = await stack.create_track(auth, duration_s=30)
    assert await stack.credits(user_id) == 5
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "FAILED"
    assert job["error_code"] == "no_capable_provider"
    assert "fal: no API key configured" in job["error_message"]
    assert job["credits_refunded"] is True
    assert await stack.credits(user_id) == 10
    track = (await stack.http.get(f"/api/tracks/{created['track_id']}", headers=auth)).json()
    assert track["status"] == "FAILED" and track["file_url"] is None
    logs = (await stack.http.get(f"/api/jobs/{created['job_id']}/logs", headers=auth)).json()
    assert any("no API key configured" in entry["message"] for entry in logs)


@pytest.mark.parametrize("stack_overrides", [{"synth_pace": 1.0}])
async def test_cancel_mid_generation_refunds_and_marks_cancelled(
    stack: Stack, stack_overrides: Any
) -> None:
    user_id, auth = await stack.user(credits=10)
    created = await stack.create_track(auth, duration_s=30)
    await stack.wait_for_job(created["job_id"], auth, until=lambda j: j["step"] == "generating")
    response = await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    assert response.status_code == 202
    job = await stack.wait_for_job(created["job_id"], auth)
    assert job["status"] == "CANCELLED"
    assert await stack.credits(user_id) == 10
    again = await stack.http.post(f"/api/jobs/{created['job_id']}/cancel", headers=auth)
    assert again.status_code == 409
    handle = stack.temporal.client.get_workflow_handle(job["workflow_id"])
    assert (await handle.describe()).status.name == "CANCELED"  # type: ignore[union-attr]
    assert await stack.storage.list_keys("tracks/") == []


async def test_users_cannot_see_or_cancel_each_others_tracks(stack: Stack) -> None:
    _, owner = await stack.user(credits=10)
    _, stranger = await stack.user(credits=10)
    created = await stack.create_track(owner)
    track_id, job_id = created["track_id"], created["job_id"]
    for method, path in (
        ("GET", f"/api/tracks/{track_id}"),
        ("GET", f"/api/jobs/{job_id}"),
        ("GET", f"/api/jobs/{job_id}/logs"),
        ("POST", f"/api/jobs/{job_id}/cancel"),
    ):
        seen = await stack.http.request(method, path, headers=stranger)
        assert seen.status_code == 404, (method, path, seen.text)
        anonymous = await stack.http.request(method, path)
        assert anonymous.status_code == 401
    listing = (await stack.http.get("/api/tracks", headers=stranger)).json()
    assert listing["total"] == 0
    job = await stack.wait_for_job(job_id, owner)
    assert job["status"] == "COMPLETE"  # the stranger's cancel did nothing


async def test_bad_input_gets_field_level_4xx(stack: Stack) -> None:
    # Pro: refused attempts count toward the rate limit too, and this sends 11.
    _, auth = await stack.user(credits=100, plan=Plan.PRO)
    cases: list[tuple[Any, str]] = [
        ({"prompt": "", "duration_s": 30}, "prompt"),
        ({"prompt": "   ", "duration_s": 30}, "prompt"),
        ({"prompt": "x" * 501, "duration_s": 30}, "prompt"),
        ({"prompt": "ok", "duration_s": 4}, "duration_s"),
        ({"prompt": "ok", "duration_s": 301}, "duration_s"),
        ({"prompt": "ok", "duration_s": "long"}, "duration_s"),
        ({"prompt": "ok", "duration_s": 30, "style_strength": 1.5}, "style_strength"),
        ({"prompt": "nul\x00byte", "duration_s": 30}, "prompt"),
        ({"prompt": "ok", "duration_s": 30, "surprise": True}, "surprise"),
        ({"duration_s": 30}, "prompt"),
    ]
    for body, field in cases:
        response = await stack.http.post("/api/tracks", json=body, headers=auth)
        assert response.status_code == 422, (body, response.text)
        locations = [detail["loc"][-1] for detail in response.json()["detail"]]
        assert field in locations, (body, locations)
    not_json = await stack.http.post(
        "/api/tracks", content=b"{not json", headers={**auth, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422
    assert (await stack.http.get("/api/tracks/not-a-uuid", headers=auth)).status_code == 422
    bad_token = await stack.http.get("/api/tracks", headers={"Authorization": "Bearer nope"})
    assert bad_token.status_code == 401
    async with stack.store.sessions() as session:
        assert (await session.exec(select(func.count()).select_from(Track))).one() == 0


async def test_health_reports_version_and_readiness(stack: Stack) -> None:
    health = (await stack.http.get("/api/health")).json()
    assert health["status"] == "ok" and health["version"]
    assert health["checks"] == {"db": "ok", "temporal": "ok"}
    assert (await stack.http.get("/api/health/ready")).status_code == 200
