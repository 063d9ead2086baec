"""Each storage backend loads only what it uses: the S3 client stack (aiobotocore, botocore,
aiohttp) costs a worker ~16 MB, which the embedded default's local folder never needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.unit

REPORT = """
import json, sys
import worker
from core.settings import Settings
from core.storage import build_storage
storage = build_storage(Settings(_env_file=None, **json.loads(sys.argv[1])))
print(json.dumps({{
    "backend": type(storage).__name__,
    "s3_modules": sorted({{m.split(".")[0] for m in sys.modules}}
                         & {{"aiobotocore", "botocore", "aiohttp"}}),
}}))
"""


@pytest.mark.parametrize(
    ("backend", "expected", "s3_modules"),
    [
        ("local", "LocalStorage", []),
        ("s3", "S3Storage", ["aiobotocore", "aiohttp", "botocore"]),
    ],
)
def test_a_worker_loads_the_s3_client_only_for_s3_storage(
    backend: str, expected: str, s3_modules: list[str], tmp_path: Path
) -> None:
    settings = {
        "storage_backend": backend,
        "storage_local_dir": str(tmp_path / "objects"),
        "s3_endpoint": "http://127.0.0.1:9",  # never contacted: the client opens lazily
        "s3_bucket": "tracks",
    }
    out = subprocess.run(
        [sys.executable, "-c", REPORT.format(), json.dumps(settings)],
        cwd=PROJECT_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"backend": expected, "s3_modules": s3_modules}
