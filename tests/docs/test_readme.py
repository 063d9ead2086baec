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
GUARANTEES = ROOT / "docs" / "guarantees.md"
RESULTS = ROOT / "bench" / "RESULTS.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), RESULTS]

# Every guarantee we have made. A row may gain tests; none may leave docs/guarantees.md.
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
    "tests/e2e/test_cancel_races.py::test_a_cancel_between_the_reconcilers_read_and_its_start_pays_nothing",
    "tests/domain/test_cancel_races.py::test_a_cancel_between_the_reconcilers_read_and_its_start_is_final",
    "tests/domain/test_cancel_races.py::test_a_cancel_between_collect_and_complete_keeps_the_track_undelivered",
    "tests/workflows/test_track_workflow.py::test_a_job_that_moved_stops_the_run_without_paying_or_telling",
    "tests/domain/test_provider_deliveries.py::test_a_lost_submit_answer_is_resolved_by_its_webhook_to_the_one_paid_job",
    "tests/domain/test_lost_answers.py::test_fal_without_webhooks_is_refused_unless_the_operator_opts_in",
    "tests/domain/test_lost_answers.py::test_the_worker_command_refuses_to_start",
    "tests/e2e/test_cluster_topology.py::test_burst_survives_a_killed_worker_and_a_killed_api",
    "tests/e2e/test_cluster_topology.py::test_every_track_completes_across_a_frontend_restart",
    "tests/e2e/test_cluster_topology.py::test_cli_ends_a_run_and_the_database_and_provider_follow",
    "tests/e2e/test_cluster_topology.py::test_a_client_without_a_certificate_is_refused_in_one_sentence",
    "tests/e2e/test_cluster_topology.py::test_a_certificate_from_another_ca_is_refused_in_one_sentence",
    "tests/core/test_temporal_connect.py::test_each_wrong_setting_gets_one_plain_sentence",
    "tests/core/test_temporal_search_attributes.py::test_ready_means_a_create_succeeds_right_after_registration",
    "tests/core/test_temporal_search_attributes.py::test_worker_ready_means_a_create_succeeds",
    "tests/core/test_temporal_search_attributes.py::test_without_operator_rights_the_worker_names_the_command_and_the_api_says_so",
    "tests/e2e/test_rollout.py::test_a_rollout_at_the_bad_moment_moves_no_run_and_pays_each_once",
    "tests/e2e/test_rollout.py::test_an_unversioned_worker_refuses_where_versioning_is_in_use",
    "tests/workflows/test_replay.py",
    "tests/engines/test_svg_sanitize_cost.py::test_work_grows_linearly_with_size_for_every_costly_shape",
    "tests/engines/test_render_sandbox_sanitize.py::test_the_costliest_svgs_at_the_limit_are_checked_in_the_child_in_bounded_time",
    "tests/api/test_preview_stampede.py::test_a_stampede_on_a_fresh_share_draws_its_preview_once",
    "tests/api/test_preview_stampede.py::test_past_the_queue_bound_visitors_get_503_with_retry_after",
    "tests/api/test_wav_stream.py::test_a_slow_download_holds_no_copy_and_later_ones_wait_their_turn",
    "tests/api/test_wav_stream.py::test_a_client_that_hangs_up_mid_download_gives_its_slot_back",
    "tests/e2e/test_webhook_bounds.py::test_an_endless_answer_is_never_read",
    "tests/activities/providers/test_download_bounds.py::test_an_endless_body_stops_at_the_cap",
    "tests/activities/providers/test_download_bounds.py::test_a_redirect_to_a_non_public_address_is_never_followed",
    "tests/e2e/test_webhook_bounds.py::test_cloud_metadata_addresses_are_refused_up_front",
    "tests/e2e/test_webhook_bounds.py::test_webhook_ports_are_80_443_and_those_allowed",
    "tests/e2e/test_provider_webhooks.py::test_another_fal_customers_genuine_delivery_cannot_resolve_our_submission",
    "tests/domain/test_provider_deliveries.py::test_a_fal_delivery_naming_another_fal_user_is_refused",
    "tests/domain/test_provider_deliveries.py::test_a_replayed_delivery_is_refused_inside_the_tolerance",
    "tests/domain/test_provider_deliveries.py::test_a_run_the_provider_does_not_confirm_to_our_key_is_refused",
    "tests/domain/test_provider_deliveries.py::test_a_providers_error_quoting_the_webhook_url_loses_the_token",
    "tests/core/test_storage_writes.py::test_two_local_writers_at_one_instant_leave_one_whole_file",
    "tests/core/test_storage_writes.py::test_two_s3_writers_at_one_instant_leave_one_whole_object",
    "tests/core/test_storage_writes.py::test_s3_links_serve_svg_as_an_attachment_of_its_own_type",
    "tests/api/test_signed_links.py::test_inline_links_show_svg_sandboxed",
    "tests/api/test_signed_links.py::test_a_wav_signature_opens_no_file_and_a_file_signature_no_wav",
    "tests/api/test_signed_links.py::test_name_and_inline_are_covered_by_the_signature",
    "tests/api/test_network_trust.py::test_metrics_answer_loopback_only_by_default",
    "tests/api/test_network_trust.py::test_metrics_behind_a_token",
    "tests/core/test_capped.py",
    "tests/activities/providers/test_hosted_contract.py::test_a_huge_poll_answer_fails_the_attempt_in_bounded_memory",
    "tests/domain/test_incoming_webhooks.py::test_a_jwks_longer_than_the_cap_is_no_key_set",
    "tests/activities/providers/test_hosted_contract.py::test_a_huge_submit_answer_is_a_lost_answer",
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
    rows = table_rows(section(GUARANTEES.read_text(), "What we guarantee"))
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
