"""The staging compose settings bring the app up against locally run services.

Docker cannot run here, so this takes the `api` and `worker` environments exactly as
docker-compose.temporal.yml gives them, swaps only the service addresses and the
per-run credentials of the local stand-ins (Postgres, versitygw for MinIO, the Temporal
dev server), and runs what staging runs: migrate, doctor, the API and a worker, then
makes a track.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.api_process import api_processes
from tests.deploy.test_compose import app_env, compose, raw, services
from tests.services import PostgresCluster, TemporalDevServer, VersityGateway

__all__ = ["compose", "raw", "services"]

SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"


def local_env(
    compose_env: dict[str, str],
    database_url: str,
    s3: VersityGateway,
    temporal: TemporalDevServer,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(("PATH", "HOME", "LANG"))}
    env.update(compose_env)
    env.update(
        DATABASE_URL=database_url,  # postgres:5432 -> the local cluster
        S3_ENDPOINT=s3.endpoint,  # minio:9000 -> versitygw
        S3_PUBLIC_ENDPOINT=s3.endpoint,  # localhost:9000 -> versitygw
        S3_ACCESS_KEY=s3.access_key,
        S3_SECRET_KEY=s3.secret_key,
        TEMPORAL_ADDRESS=temporal.target_host,  # temporal:7233 -> the dev server
        WORKER_METRICS_PORT="0",
    )
    return env


async def run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(SOUNDFOUNDRY), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_staging_settings_run_migrate_doctor_api_and_worker(
    services: dict[str, dict[str, Any]],
    pg_cluster: PostgresCluster,
    s3_gateway: VersityGateway,
    temporal_server: TemporalDevServer,
    tmp_path: Path,
) -> None:
    api = app_env(services, "api")
    worker = app_env(services, "worker")
    worker.pop("WORKER_METRICS_PORT")  # the one worker-only setting
    assert api == worker, "api and worker must share one configuration"
    s3_gateway.create_bucket(api["S3_BUCKET"])  # what minio-init does
    env = local_env(
        api, pg_cluster.create_database("staging_settings"), s3_gateway, temporal_server
    )
    env["TASK_QUEUE"] = f"{api['TASK_QUEUE']}-{tmp_path.name}"[:100]

    migrated = await run(env, tmp_path, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    doctor = await run(env, tmp_path, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "0 failed" in doctor.stdout

    worker_process = await asyncio.to_thread(
        subprocess.Popen,
        [str(SOUNDFOUNDRY), "worker"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        user = await run(env, tmp_path, "users", "create", "--credits", "10")
        token = user.stdout.strip().splitlines()[-1]
        auth = {"Authorization": f"Bearer {token}"}
        async with (
            api_processes(env, tmp_path, workers=1) as url,
            httpx.AsyncClient(base_url=url, headers=auth, timeout=10) as http,
        ):
            assert (await http.get("/api/health/ready")).status_code == 200
            created = (
                await http.post("/api/tracks", json={"prompt": "staging check", "duration_s": 5})
            ).json()
            for _ in range(300):
                job = (await http.get(f"/api/jobs/{created['job_id']}")).json()
                if job["status"] not in ("QUEUED", "RENDERING"):
                    break
                await asyncio.sleep(0.2)
            assert job["status"] == "COMPLETE", job
            track = (await http.get(f"/api/tracks/{created['track_id']}")).json()
            assert track["file_url"].startswith(s3_gateway.endpoint)
    finally:
        worker_process.terminate()
        worker_process.wait(timeout=60)
