"""The README and the docs say what is true of this checkout.

The README opens with the two commands, keeps every guarantee with a test that exists,
names only settings the app reads, carries no dated figures (those live in
bench/RESULTS.md, one table per benchmark), and links only to files that exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core.contracts import JobStatus

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RESULTS = ROOT / "bench" / "RESULTS.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), RESULTS]

# Every guarantee the README has made. A row may gain tests; none may leave the table.
GUARANTEE_TESTS = {
    "tests/e2e/test_pay_once.py::test_lost_replicate_answer_is_found_not_resent",
    "tests/e2e/test_webhook_completion.py::test_a_lost_fal_answer_is_resolved_by_its_webhook",
    "tests/e2e/test_pay_once.py::test_unresolvable_fal_answer_is_ambiguous_and_never_resent",
    "tests/e2e/test_pay_once.py::test_sigkill_while_the_submit_is_in_flight_pays_once",
    "tests/e2e/test_pay_once.py::test_sigkill_after_the_audio_is_stored_and_before_it_is_recorded",
    "tests/e2e/test_provider_fallback.py::test_sigkill_after_submit_completes_with_one_submission",
    "tests/e2e/test_pay_once.py::test_kill_storm_pays_and_charges_once_per_track",
    "tests/e2e/test_pay_once.py::test_cancel_while_the_submit_is_in_flight_cancels_the_job",
    "tests/e2e/test_pay_once.py::test_terminate_while_rendering_refunds_and_cancels_the_job",
    "tests/e2e/test_pay_once.py::test_fallback_after_5xx_polls_cancels_the_first_job",
    "tests/api/test_workflow_start.py::test_a_start_whose_answer_is_lost_makes_one_track_charged_once",
    "tests/api/test_workflow_start.py::test_a_start_temporal_cannot_confirm_and_that_never_happened_is_started_later",
    "tests/e2e/test_provider_webhooks.py",
    "tests/e2e/test_webhook_completion.py::test_a_forged_webhook_is_refused_and_changes_nothing",
    "tests/e2e/test_webhook_completion.py::test_a_lost_delivery_is_covered_by_the_safety_poll",
    "tests/e2e/test_waiting_capacity.py",
}


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next `## `)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section '## {heading}'"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in `text` (header and rule left out)."""
    rows: list[list[str]] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.startswith("|") or re.fullmatch(r"\|( *-+ *\|)+", line):
            continue
        is_header = index + 1 < len(lines) and re.fullmatch(r"\|( *-+ *\|)+", lines[index + 1])
        if not is_header:
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    blocks = re.findall(r"```\w*\n(.*?)```", README.read_text(), re.S)
    assert [block.strip() for block in blocks[:2]] == ["./scripts/dev", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "exec scripts/test" in ci


def test_every_guarantee_names_tests_that_exist() -> None:
    rows = table_rows(section(README.read_text(), "What we guarantee"))
    named: set[str] = set()
    for fault, outcome, proof in rows:
        assert fault and outcome, proof
        references = re.findall(r"`(tests/[^`:]+\.py)(?:::(\w+))?`", proof)
        assert references, f"the guarantee '{fault}' names no test"
        for path, test in references:
            assert (ROOT / path).is_file(), path
            if test:
                assert test in defined_tests(ROOT / path), f"{path}::{test} does not exist"
            named.add(f"{path}::{test}" if test else path)
    assert named >= GUARANTEE_TESTS, sorted(GUARANTEE_TESTS - named)


def test_the_readme_names_only_settings_the_app_reads() -> None:
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    not_settings = {status.value for status in JobStatus} | {"DEV_LOGIN_SECRET"}
    named = set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=[^`]*)?`", README.read_text()))
    assert named - not_settings <= documented, sorted(named - not_settings - documented)


def test_the_readme_carries_no_dated_figures_and_stays_short() -> None:
    text = README.read_text()
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text)
    figures = re.findall(r"\d[\d.,\u2013-]*\s*(?:ms|tracks/s|MB|\u00d7 R|\u00d7 real time)\b", text)
    assert not figures, f"figures belong in bench/RESULTS.md: {figures}"
    assert len(text.splitlines()) <= 420


def test_links_between_the_docs_point_at_files_that_exist() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"\w+://", target):
                continue
            path = (doc.parent / target).resolve()
            path.relative_to(ROOT)  # raises for a link that leaves the project
            assert path.exists(), f"{doc.name} links to {target}"


def test_each_benchmark_has_a_table_with_date_machine_baseline_and_command() -> None:
    text = RESULTS.read_text()
    benchmarks = re.findall(r"^## (bench\.\w+)(.*)$", text, re.M)
    assert benchmarks
    for module, variant in benchmarks:
        body = section(text, module + variant)
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file(), module
        assert f"python -m {module}" in body, f"{module}: no command that reproduces it"
        headers = [line for line in body.splitlines() if line.startswith("| date | machine |")]
        assert headers, f"{module}{variant}: no table starting with date and machine"
        assert all("baseline" in header for header in headers), f"{module}: no baseline column"
        for row in table_rows(body):
            assert re.fullmatch(r"20\d\d-\d\d-\d\d", row[0]), f"{module}: undated row {row}"
