"""The Prometheus config, alert rules and their unit tests in deploy/prometheus are valid.

promtool (Debian package `prometheus`) checks the files and runs alerts_test.yml; the
test here also makes sure no alert in alerts.yml goes without a test that fires it, one
that shows it staying quiet, and that every recording rule is evaluated by a test.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
CONFIG = PROM_DIR / "prometheus.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if Path("/usr/bin/promtool").is_file():
        return "/usr/bin/promtool"
    pytest.fail(
        "promtool not found (on PATH or at /usr/bin/promtool): run `scripts/setup.sh --test`,"
        " which installs it with the Debian package `prometheus`",
        pytrace=False,
    )


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def rules() -> Iterator[dict[str, Any]]:
    for group in load(ALERTS)["groups"]:
        yield from group["rules"]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


@pytest.fixture
def deployed_config(tmp_path: Path) -> Path:
    """deploy/prometheus as deployed: with the metrics token file the config names (a
    secret, so never in the repository), which `promtool check config` requires."""
    folder = tmp_path / "prometheus"
    shutil.copytree(PROM_DIR, folder)
    (folder / "metrics_token").write_text("token-for-the-config-check\n")
    return folder / CONFIG.name


@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", str(ALERTS)],
        ["check", "config", "{config}"],
        ["test", "rules", str(ALERTS_TEST)],
    ],
    ids=["check-rules", "check-config", "test-rules"],
)
def test_promtool(args: list[str], deployed_config: Path) -> None:
    args = [arg.format(config=deployed_config) for arg in args]
    # promtool resolves rule_files relative to the file that names them.
    done = subprocess.run(
        [promtool(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    assert "SUCCESS" in output, output


def test_the_expected_rules_exist() -> None:
    assert alert_names() >= {
        "HighHTTP5xxRate",
        "HighQueueLatency",
        "ProviderAuthFailures",
        "AmbiguousProviderSubmission",
        "S3Errors",
        "JobDurationSLOBreachP95",
        "JobDurationSLOBreachP99",
    }
    assert recorded_names() >= {
        "job:duration_seconds:p95_short",
        "job:duration_seconds:p99_short",
        "http:error_ratio:rate5m",
        "job:queue_latency_seconds:p95",
    }


def test_every_alert_has_a_firing_and_a_quiet_test_case() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in load(ALERTS_TEST)["tests"]:
        for case in group.get("alert_rule_test") or []:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    defined = alert_names()
    assert defined, f"no alerts in {ALERTS}"
    assert not defined - fired, f"alerts without a test that fires them: {defined - fired}"
    assert not defined - quiet, f"alerts without a test where they stay quiet: {defined - quiet}"
    assert not (fired | quiet) - defined, f"tests for unknown alerts: {(fired | quiet) - defined}"


def test_every_alert_says_what_to_do() -> None:
    for rule in rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        assert rule.get("for"), f"{name} has no `for:`"
        assert rule.get("labels", {}).get("severity") in {"critical", "warning"}, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name} has no summary"
        assert annotations.get("description"), f"{name} has no description"


def test_the_api_is_scraped_with_the_metrics_token() -> None:
    # The API's /metrics answers loopback only unless it has a token (api/metrics.py).
    jobs = {job["job_name"]: job for job in load(CONFIG)["scrape_configs"]}
    authorization = jobs["soundfoundry-api"]["authorization"]
    assert authorization == {"type": "Bearer", "credentials_file": "metrics_token"}
    assert "metrics_token" in (PROM_DIR / ".gitignore").read_text().split()


def test_every_recording_rule_is_evaluated_by_a_test() -> None:
    exprs = [
        case["expr"]
        for group in load(ALERTS_TEST)["tests"]
        for case in group.get("promql_expr_test") or []
    ]
    untested = {name for name in recorded_names() if not any(name in expr for expr in exprs)}
    assert not untested, f"recording rules without a promql_expr_test: {untested}"
