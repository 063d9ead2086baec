"""The staging stack, checked without Docker: docker-compose.temporal.yml, the Dockerfile,
.dockerignore, deploy/staging.env.example and deploy/postgres/init.sql.

No container is started. The compose file is parsed with PyYAML and interpolated the way
compose does it; `docker compose config` is run as well when a compose v2 binary exists.
The one test that needs a service runs init.sql against a throwaway local PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from core.s3_storage import S3Storage
from core.settings import Settings
from core.storage import build_storage
from core.temporal import SEARCH_ATTRIBUTE_NAMES
from soundfoundry.devstack import DEV_SERVER_TUNING

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.temporal.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "deploy" / "staging.env.example"
INIT_SQL = ROOT / "deploy" / "postgres" / "init.sql"
SETUP_SH = ROOT / "scripts" / "setup.sh"

EXPECTED_SERVICES = {
    "postgres",
    "temporal-schema",
    "temporal",
    "temporal-admin-tools",
    "temporal-setup",
    "temporal-ui",
    "minio",
    "minio-init",
    "migrate",
    "api",
    "worker",
}
ONE_SHOTS = {"migrate", "temporal-schema", "temporal-setup", "minio-init"}
APP_SERVICES = ("api", "worker", "migrate")

# What every app process needs to reach Postgres, Temporal and S3 on the staging network.
ESSENTIAL_APP_ENV = (
    "DATABASE_URL",
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TASK_QUEUE",
    "TEMPORAL_UI_URL",
    "STORAGE_BACKEND",
    "S3_ENDPOINT",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "S3_BUCKET",
    "S3_REGION",
    "PUBLIC_BASE_URL",
    "SECRET_KEY",
    "MUSIC_PROVIDERS",
    "FAL_KEY",
    "REPLICATE_API_TOKEN",
    "CORS_ORIGINS",
    "ENVIRONMENT",
    "LOG_LEVEL",
)
# Read by the worker's metrics endpoint; not (yet) a Settings field everywhere.
EXTRA_APP_ENV = {"WORKER_METRICS_PORT"}
# Never optional: compose must refuse to start without them (`${VAR:?...}`).
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD",
    "APP_DB_PASSWORD",
    "TEMPORAL_DB_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "SECRET_KEY",
}
# Passed through by name only: an empty string would still count as a configured key.
PASS_THROUGH = {"FAL_KEY", "REPLICATE_API_TOKEN", "MUSIC_PROVIDER", "METRICS_TOKEN"}

SECRET_NAME = re.compile(r"PASSWORD|_PWD$|SECRET|_KEY$|TOKEN")
INTERPOLATION = re.compile(
    r"\$(?:\$|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}


# ------------------------------------------------------------------------------------
# Helpers: compose interpolation, env files, the Dockerfile
# ------------------------------------------------------------------------------------
class MissingVariable(KeyError):
    pass


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `$$`.

    Stricter than compose in one way: a plain `${VAR}` that is unset is an error here
    rather than a silent empty string.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        current = env.get(name)
        missing = not current if op.startswith(":") else current is None
        if missing and op.endswith("-"):
            return arg
        if missing and (op.endswith("?") or current is None):
            raise MissingVariable(f"{name}: {arg or 'not set'}")
        return current or ""

    return INTERPOLATION.sub(replace, value)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    return node


def compose_source() -> str:
    """The compose file without its comment lines (compose never interpolates those)."""
    lines = COMPOSE_FILE.read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


def variables_in(text: str) -> dict[str, set[str]]:
    """Every `${NAME...}` referenced in text, with the operators it is used with."""
    found: dict[str, set[str]] = {}
    for match in INTERPOLATION.finditer(text):
        name = match.group("name")
        if name:
            found.setdefault(name, set()).add(match.group("op") or "")
    return found


def read_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(active KEY=value lines, names that appear only commented out as `# KEY=`)."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            active[match.group(1)] = match.group(2)
        elif match := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            commented.add(match.group(1))
    return active, commented - set(active)


def dummy_env() -> dict[str, str]:
    """The example's values, with a URL-safe stand-in for every secret left empty."""
    active, _ = read_env_file(ENV_EXAMPLE)
    return {
        name: value or (f"staging-{name.lower().replace('_', '-')}-0123456789abcdef")
        if SECRET_NAME.search(name)
        else value
        for name, value in active.items()
    }


def environment_of(service: Mapping[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = [item.split("=", 1) for item in env]
        return {pair[0]: pair[1] if len(pair) == 2 else None for pair in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def settings_env_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def image_is_pinned(reference: str) -> bool:
    """A digest, or a tag naming a release: `16.14-alpine`, `RELEASE.2025-...`, `3.11.14-slim`.

    Moving tags (`latest`, `alpine`, `stable`) and missing tags fail.
    """
    if "@sha256:" in reference:
        return True
    last = reference.rsplit("/", 1)[-1]
    name, _, tag = last.partition(":")
    return bool(name) and bool(re.match(r"(v?\d+\.\d+|RELEASE\.\d{4}-)", tag))


def script_text(service: Mapping[str, Any]) -> str:
    """Everything a service runs through a shell or exec: entrypoint, command, healthcheck."""
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(str(item) for item in value)
    test = (service.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        parts.extend(str(item) for item in test)
    elif isinstance(test, str):
        parts.append(test)
    return "\n".join(parts)


def healthcheck_url(test: list[str] | str) -> tuple[str, int, str]:
    text = " ".join(test) if isinstance(test, list) else test
    match = re.search(r"http://([\w.-]+):(\d+)(/[\w/.-]*)", text)
    assert match, f"no http URL in healthcheck {text!r}"
    return match.group(1), int(match.group(2)), match.group(3)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def from_image(arguments: str) -> str:
    return next(token for token in arguments.split() if not token.startswith("--"))


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), arguments
    return [str(item) for item in parsed]


def option_value(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


# ------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The compose file as written (anchors merged, nothing interpolated)."""
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The compose file interpolated with the example's values and dummy secrets."""
    resolved = resolve(raw, dummy_env())
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def app_env(services: Mapping[str, Mapping[str, Any]], name: str = "api") -> dict[str, str]:
    env = environment_of(services[name])
    return {key: value for key, value in env.items() if value is not None}


# ------------------------------------------------------------------------------------
# Shape: services, images, health and restart policies
# ------------------------------------------------------------------------------------
def test_compose_defines_the_staging_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED_SERVICES


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICES))
def test_every_image_is_pinned(services: dict[str, dict[str, Any]], name: str) -> None:
    image = services[name].get("image")
    assert image, f"{name} has no image"
    if name in APP_SERVICES:
        # Built from ./Dockerfile; deploys set SOUNDFOUNDRY_IMAGE to a registry tag.
        assert ":" in image and not image.endswith(":latest"), image
    else:
        assert image_is_pinned(image), f"{name}: {image} is not pinned to a release"


def test_one_shots_never_restart(services: dict[str, dict[str, Any]]) -> None:
    # Quoted "no": bare `no` is YAML's false, which compose rejects as a restart policy.
    one_shots = {name for name, svc in services.items() if svc.get("restart") == "no"}
    assert one_shots == ONE_SHOTS


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICES - ONE_SHOTS))
def test_long_running_services_have_healthcheck_and_restart(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    service = services[name]
    assert service.get("restart") in RESTART_POLICIES, f"{name}: restart {service.get('restart')}"
    check = service.get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{name} healthcheck lacks {key}"


def test_worker_scales_out_and_shuts_down_gracefully(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    # Replicas would collide on a fixed name or host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    grace = re.fullmatch(r"(\d+)s", str(worker.get("stop_grace_period", "")))
    assert grace, "worker needs a stop_grace_period in seconds"
    default_shutdown = Settings.model_fields["worker_graceful_shutdown_s"].default
    assert int(grace.group(1)) > default_shutdown
    env = app_env(services, "worker")
    # The probe reads the port from the same variable the worker listens on.
    probe = re.search(
        r"http://127\.0\.0\.1:%s/metrics' % os\.environ\.get\('WORKER_METRICS_PORT', '(\d+)'\)",
        script_text(worker),
    )
    assert probe, "worker healthcheck must probe /metrics on WORKER_METRICS_PORT"
    assert probe.group(1) == env["WORKER_METRICS_PORT"] == "9464"


def test_app_services_share_one_image_built_here(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_scripts_leave_shell_variables_to_the_shell(raw: dict[str, Any]) -> None:
    # A single `$VAR` or `${VAR}` in a script is expanded by compose when the file is
    # parsed, not by the container's shell: scripts must read the environment via `$$`.
    for name, service in raw["services"].items():
        leftover = script_text(service).replace("$$", "")
        assert "$" not in leftover, f"{name}: unescaped $ in its scripts"


# ------------------------------------------------------------------------------------
# Environment: what the app reads, and no literal secrets
# ------------------------------------------------------------------------------------
def test_essential_settings_exist_in_the_app() -> None:
    missing = set(ESSENTIAL_APP_ENV) - settings_env_names()
    assert not missing, f"compose sets variables the app no longer reads: {sorted(missing)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_receive_the_essential_settings(raw: dict[str, Any], name: str) -> None:
    env = environment_of(raw["services"][name])
    missing = [key for key in ESSENTIAL_APP_ENV if key not in env]
    assert not missing, f"{name} lacks {missing}"
    unknown = set(env) - settings_env_names() - EXTRA_APP_ENV
    assert not unknown, f"{name} sets variables the app does not read: {sorted(unknown)}"
    assert env["ENVIRONMENT"] == "staging"
    assert env["STORAGE_BACKEND"] == "s3"


def test_optional_provider_keys_are_passed_through_by_name(raw: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = environment_of(raw["services"][name])
        for key in PASS_THROUGH:
            assert key in env and env[key] is None, f"{name}: {key} must have no value"
    _, commented = read_env_file(ENV_EXAMPLE)
    assert commented >= {"FAL_KEY", "REPLICATE_API_TOKEN"}, "keep unused keys commented out"


def test_no_literal_secret_in_the_compose_file(raw: dict[str, Any]) -> None:
    for name, service in raw["services"].items():
        for key, value in environment_of(service).items():
            if value is None:
                continue
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", value), (
                    f"{name}.{key} must be a required ${{VAR:?...}} interpolation, got {value!r}"
                )
            url = urlsplit(value) if "://" in value else None
            if url is not None and url.password:
                assert url.password.startswith("${"), f"{name}.{key} embeds a password"


def test_required_secrets_fail_closed() -> None:
    text = compose_source()
    used = variables_in(text)
    for name in REQUIRED_SECRETS:
        assert name in used, f"{name} is never used"
        assert used[name] == {":?"}, f"{name} must always be ${{{name}:?...}}, got {used[name]}"
    # Every secret-looking variable is either required or an optional empty default.
    for name, ops in used.items():
        if SECRET_NAME.search(name) and name not in REQUIRED_SECRETS:
            assert ops <= {":?", ":-"}, name
            assert not re.search(rf"\$\{{{name}:-[^}}]", text), f"{name} has a default value"


def test_a_missing_secret_stops_interpolation(raw: dict[str, Any]) -> None:
    for name in REQUIRED_SECRETS:
        env = dummy_env()
        env[name] = ""
        with pytest.raises(MissingVariable, match=name):
            resolve(raw, env)


def test_env_example_lists_what_compose_needs() -> None:
    active, commented = read_env_file(ENV_EXAMPLE)
    used = set(variables_in(compose_source()))
    assert used <= set(active) | commented, sorted(used - set(active) - commented)
    listed = set(active) | commented
    assert listed <= used | PASS_THROUGH, sorted(listed - used - PASS_THROUGH)
    required = {name for name, ops in variables_in(compose_source()).items() if ":?" in ops}
    assert required <= set(active), f"required but not listed: {sorted(required - set(active))}"
    # The example carries no secret: each one is left empty for the operator to fill in.
    filled = {name for name, value in active.items() if SECRET_NAME.search(name) and value}
    assert not filled, f"secrets with values in the example: {sorted(filled)}"


# ------------------------------------------------------------------------------------
# Wiring: dependencies, addresses, ports
# ------------------------------------------------------------------------------------
def test_dependencies_exist_and_wait_for_the_right_condition(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use the long depends_on form"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            expected = (
                "service_completed_successfully" if target in ONE_SHOTS else "service_healthy"
            )
            assert spec.get("condition") == expected, f"{name} -> {target}"
            if expected == "service_healthy":
                assert services[target].get("healthcheck", {}).get("test"), target


def test_dependency_graph_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert state.get(name) != "visiting", f"cycle: {' -> '.join((*path, name))}"
        if state.get(name) == "done":
            return
        state[name] = "visiting"
        for target in services[name].get("depends_on") or {}:
            visit(target, (*path, name))
        state[name] = "done"

    for name in services:
        visit(name, ())


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_starts_after_setup_is_done(services: dict[str, dict[str, Any]], name: str) -> None:
    # Directly or through another service (temporal-schema -> temporal -> temporal-setup).
    waits_for: set[str] = set()
    frontier = list(services[name]["depends_on"])
    while frontier:
        target = frontier.pop()
        if target not in waits_for:
            waits_for.add(target)
            frontier += list(services[target].get("depends_on") or {})
    assert waits_for >= ONE_SHOTS - {name}


def test_migrate_waits_for_postgres_only(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["command"] == ["soundfoundry", "migrate"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_api_port_matches_healthcheck_and_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    (mapping,) = api["ports"]
    published, container = (int(part) for part in str(mapping).rsplit(":", 2)[-2:])
    assert published == container == 8000
    host, port, path = healthcheck_url(api["healthcheck"]["test"])
    assert (host, port, path) == ("127.0.0.1", container, "/api/health")
    assert int(option_value(api["command"], "--port")) == container

    final = dockerfile_stages()[-1]
    exposed = {int(port) for kw, rest in final if kw == "EXPOSE" for port in rest.split()}
    assert container in exposed
    (healthcheck,) = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    assert healthcheck_url(healthcheck)[1:] == (container, "/api/health")
    (cmd,) = [exec_form(rest) for kw, rest in final if kw == "CMD"]
    assert int(option_value(cmd, "--port")) == container


def exposed_ports(service: Mapping[str, Any]) -> set[int]:
    return {int(str(port).split("/")[0]) for port in service.get("expose") or []}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_addresses_point_at_the_stack(services: dict[str, dict[str, Any]], name: str) -> None:
    env = app_env(services, name)

    host, _, port = env["TEMPORAL_ADDRESS"].partition(":")
    assert host == "temporal" and int(port) in exposed_ports(services["temporal"])

    s3 = urlsplit(env["S3_ENDPOINT"])
    assert s3.hostname == "minio" and s3.port in exposed_ports(services["minio"])

    db = urlsplit(env["DATABASE_URL"])
    assert db.scheme == "postgresql+asyncpg"
    assert db.hostname == "postgres" and db.port in exposed_ports(services["postgres"])
    assert (db.username, db.path) == ("soundfoundry", "/soundfoundry")


def test_temporal_clients_share_one_address(services: dict[str, dict[str, Any]]) -> None:
    address = app_env(services)["TEMPORAL_ADDRESS"]
    assert address == "temporal:7233"
    for name in ("temporal-ui", "temporal-admin-tools", "temporal-setup", "temporal"):
        assert environment_of(services[name])["TEMPORAL_ADDRESS"] == address, name
    assert f"--address {address}" in script_text(services["temporal"])


def test_temporal_namespace_is_the_apps(raw: dict[str, Any]) -> None:
    # Compared unresolved: every place must follow the same variable.
    app_ns = environment_of(raw["services"]["api"])["TEMPORAL_NAMESPACE"]
    assert app_ns == "${TEMPORAL_NAMESPACE:-default}"
    for name in ("temporal-setup", "temporal-admin-tools"):
        assert environment_of(raw["services"][name])["TEMPORAL_NAMESPACE"] == app_ns
    assert environment_of(raw["services"]["temporal-ui"])["TEMPORAL_DEFAULT_NAMESPACE"] == app_ns


def test_temporal_setup_registers_the_apps_search_attributes(
    services: dict[str, dict[str, Any]],
) -> None:
    setup = services["temporal-setup"]
    names = (environment_of(setup)["SEARCH_ATTRIBUTES"] or "").split()
    assert (
        sorted(names)
        == sorted(SEARCH_ATTRIBUTE_NAMES)
        == sorted(["TrackId", "UserId", "Provider", "JobStatus"])
    )
    script = script_text(setup)
    assert "for name in $SEARCH_ATTRIBUTES" in script  # `$$` in the file, resolved here
    assert "search-attribute create" in script and "--type Keyword" in script
    assert "already exists" in script, "re-running the setup must not fail"


def test_temporal_setup_creates_the_namespace_with_its_retention(
    services: dict[str, dict[str, Any]],
) -> None:
    # The server image creates no namespace (auto-setup did): the setup job must.
    setup = services["temporal-setup"]
    script = script_text(setup)
    create = script.index("operator namespace create")
    assert script.index("operator namespace describe") < create, "create only when missing"
    assert '--retention "$TEMPORAL_RETENTION"' in script[create:]
    assert environment_of(setup)["TEMPORAL_RETENTION"] == "72h"


def test_credentials_are_shared_by_variable_not_by_copy(raw: dict[str, Any]) -> None:
    svc = raw["services"]
    app = environment_of(svc["api"])
    pg = environment_of(svc["postgres"])
    temporal = environment_of(svc["temporal"])
    minio = environment_of(svc["minio"])
    minio_init = environment_of(svc["minio-init"])
    assert pg["APP_DB_PASSWORD"] and pg["APP_DB_PASSWORD"] in (app["DATABASE_URL"] or "")
    schema = environment_of(svc["temporal-schema"])
    assert temporal["POSTGRES_PWD"] == pg["TEMPORAL_DB_PASSWORD"] == schema["SQL_PASSWORD"]
    assert temporal["POSTGRES_SEEDS"] == schema["SQL_HOST"] == "postgres"
    assert temporal["POSTGRES_USER"] == schema["SQL_USER"]
    for key in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET"):
        assert minio_init[key] == app[key], key
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert minio_init[key] == minio[key], key
    assert "MINIO_ROOT_PASSWORD" not in app, "the app uses its own MinIO user, not root"


def test_init_sql_matches_the_compose_layout(services: dict[str, dict[str, Any]]) -> None:
    sql = INIT_SQL.read_text()
    db = urlsplit(app_env(services)["DATABASE_URL"])
    temporal = environment_of(services["temporal"])
    owners = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", sql))
    assert owners[db.path.lstrip("/")] == db.username
    assert owners[temporal["DBNAME"] or ""] == temporal["POSTGRES_USER"]
    assert owners[temporal["VISIBILITY_DBNAME"] or ""] == temporal["POSTGRES_USER"]
    schema = environment_of(services["temporal-schema"])
    assert (schema["DBNAME"], schema["VISIBILITY_DBNAME"]) == (
        temporal["DBNAME"],
        temporal["VISIBILITY_DBNAME"],
    )
    # init.sql creates Temporal's databases: the schema job never does.
    assert "create-database" not in script_text(services["temporal-schema"])
    mounts = services["postgres"]["volumes"]
    assert any(
        m.startswith("./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/") for m in mounts
    )


def test_bucket_stays_private(services: dict[str, dict[str, Any]]) -> None:
    script = script_text(services["minio-init"])
    assert "mc anonymous set none" in script
    assert "mc mb --ignore-existing" in script
    assert not re.search(r"anonymous set (download|public|upload)", script)


# ------------------------------------------------------------------------------------
# The same settings bring up the app
# ------------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Mapping[str, str]], None]]:
    for name in settings_env_names() | EXTRA_APP_ENV:
        monkeypatch.delenv(name, raising=False)

    def apply(env: Mapping[str, str]) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    yield apply


@pytest.mark.parametrize("name", APP_SERVICES)
def test_staging_environment_validates_as_settings(
    services: dict[str, dict[str, Any]],
    clean_env: Callable[[Mapping[str, str]], None],
    name: str,
) -> None:
    clean_env(app_env(services, name))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert settings.environment == "staging"
    assert settings.database_url.startswith("postgresql+asyncpg://soundfoundry:")
    assert not settings.is_sqlite
    assert settings.temporal_address == "temporal:7233"
    assert settings.temporal_namespace == "default"
    assert settings.search_attributes_enabled
    assert settings.storage_backend == "s3"
    assert settings.s3_endpoint == "http://minio:9000"
    assert settings.s3_access_key and settings.s3_secret_key
    assert settings.secret_key.get_secret_value() != "change-me-in-production"
    # No provider key in the example: the unset keys stay unset, so the chain is synth.
    assert settings.fal_key is None and settings.replicate_api_token is None
    assert settings.provider_chain == ["synth"]
    storage = build_storage(settings)
    assert isinstance(storage, S3Storage) and storage.bucket == "soundfoundry"


# ------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ------------------------------------------------------------------------------------
def test_dockerfile_is_multi_stage_and_pinned() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        keyword, arguments = stage[0]
        assert keyword == "FROM"
        image = from_image(arguments)
        assert image_is_pinned(image), image
        if image.startswith("python:"):
            # `3.11-slim` moves with every patch release; pin the patch level.
            assert re.match(r"python:3\.11\.\d+-slim-\w+$", image), image
        assert "$" not in image, "resolve FROM images literally so pinning is visible"


def test_dockerfile_runtime_runs_unprivileged_with_a_healthcheck() -> None:
    final = dockerfile_stages()[-1]
    users = [rest for kw, rest in final if kw == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    assert any(kw == "HEALTHCHECK" for kw, _ in final)
    (cmd,) = [exec_form(rest) for kw, rest in final if kw == "CMD"]
    assert cmd == ["soundfoundry", "api", "--host", "0.0.0.0", "--port", "8000"]


def test_dockerfile_installs_the_project_without_dev_extras() -> None:
    runs = " ".join(
        rest for kw, rest in dockerfile_instructions(DOCKERFILE.read_text()) if kw == "RUN"
    )
    assert re.search(r"pip install (--no-deps )?\.(\s|$)", runs)
    assert "-e ." not in runs and "[dev]" not in runs


def test_dockerfile_source_tree_shadows_the_installed_copy() -> None:
    # core.migrate finds alembic.ini and migrations/ next to the imported `core`, so the
    # copied tree must be first on sys.path and hold both.
    final = dockerfile_stages()[-1]
    env = " ".join(rest for kw, rest in final if kw == "ENV")
    (workdir,) = [rest for kw, rest in final if kw == "WORKDIR"]
    assert f"PYTHONPATH={workdir}" in env
    copied = {rest.split()[0] for kw, rest in final if kw == "COPY" and "--from" not in rest}
    assert {"alembic.ini", "migrations", "core", "worker.py"} <= copied


def test_soundfile_wheel_bundles_libsndfile() -> None:
    # Why the runtime stage installs no libsndfile1 from apt.
    import _soundfile_data

    bundled = list(Path(_soundfile_data.__file__).parent.glob("libsndfile*"))
    assert bundled, "soundfile no longer bundles libsndfile: apt-get install libsndfile1"


def test_the_images_import_check_names_only_installed_modules() -> None:
    """The build's `python -c "import ..."` smoke checks import what the project installs
    (a dropped dependency left in them fails every image build)."""
    import importlib.util

    checked = re.findall(r'python -c "import ([\w, ]+);', DOCKERFILE.read_text())
    assert checked, "the Dockerfile no longer checks its audio stack at build time"
    for modules in checked:
        for name in (m.strip() for m in modules.split(",")):
            assert importlib.util.find_spec(name) is not None, f"{name} is not installed"


def test_dockerignore_admits_only_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from an empty context and allow paths back in"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {
        rest.split()[0].rstrip("/")
        for kw, rest in dockerfile_instructions(DOCKERFILE.read_text())
        if kw == "COPY" and "--from" not in rest
    }
    assert copied == allowed
    assert not allowed & {".env", ".venv", ".git", ".soundfoundry", "tests", "deploy"}


# ------------------------------------------------------------------------------------
# deploy/postgres/init.sql against a real (local, throwaway) PostgreSQL
# ------------------------------------------------------------------------------------
def test_postgres_init_script_creates_isolated_owners(tmp_path: Path) -> None:
    from core.migrate import upgrade
    from tests.services import PostgresCluster, ServiceError, postgres_bindir

    try:
        psql = str(postgres_bindir() / "psql")
    except ServiceError as exc:
        pytest.skip(str(exc))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "APP_DB_PASSWORD": "app0123456789abcdef",
        "TEMPORAL_DB_PASSWORD": "temporal0123456789abcdef",
    }

    def run_sql(
        dsn: str, *args: str, extra: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, *args],
            env=dict(env if extra is None else extra),
            capture_output=True,
            text=True,
            timeout=60,
        )

    with PostgresCluster(database="postgres") as pg:
        # Without the passwords the first boot must fail, not create password-less roles.
        bare = run_sql(pg.dsn(), "-f", str(INIT_SQL), extra={"PATH": env["PATH"]})
        assert bare.returncode != 0 and "APP_DB_PASSWORD is not set" in bare.stderr
        assert (
            "soundfoundry" not in run_sql(pg.dsn(), "-tAc", "SELECT rolname FROM pg_roles").stdout
        )

        done = run_sql(pg.dsn(), "-f", str(INIT_SQL))
        assert done.returncode == 0, done.stderr

        def as_role(role: str, password: str, database: str) -> str:
            return f"postgresql://{role}:{password}@{pg.host}:{pg.port}/{database}"

        app_pw, temporal_pw = env["APP_DB_PASSWORD"], env["TEMPORAL_DB_PASSWORD"]
        # The app role migrates its own database (what the `migrate` service does)...
        upgrade(as_role("soundfoundry", app_pw, "soundfoundry").replace("://", "+asyncpg://", 1))
        tables = run_sql(as_role("soundfoundry", app_pw, "soundfoundry"), "-tAc", "\\dt")
        assert "alembic_version" in tables.stdout, tables.stderr
        # ...Temporal's role can build its schemas in both of its databases...
        for database in ("temporal", "temporal_visibility"):
            created = run_sql(
                as_role("temporal", temporal_pw, database), "-c", "CREATE TABLE t (x int)"
            )
            assert created.returncode == 0, created.stderr
        # ...and neither can connect to the other's data.
        for role, password, database in (
            ("soundfoundry", app_pw, "temporal"),
            ("temporal", temporal_pw, "soundfoundry"),
        ):
            denied = run_sql(as_role(role, password, database), "-c", "SELECT 1")
            assert denied.returncode != 0 and "permission denied" in denied.stderr


# ------------------------------------------------------------------------------------
# docker compose itself, when a v2 binary is on this machine (no daemon needed)
# ------------------------------------------------------------------------------------
def compose_command() -> list[str] | None:
    """$DOCKER_COMPOSE, `docker compose`, `docker-compose`, or a build in the tool cache."""
    from tests.services import tool_cache_dir

    candidates: list[list[str]] = []
    if override := os.environ.get("DOCKER_COMPOSE"):
        candidates.append([override])
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    if standalone := shutil.which("docker-compose"):
        candidates.append([standalone])
    candidates += [[str(path)] for path in sorted(tool_cache_dir().glob("docker-compose-*"))]
    for command in candidates:
        try:
            probe = subprocess.run(
                [*command, "version", "--short"], capture_output=True, text=True, timeout=30
            )
        except OSError:
            continue
        version = probe.stdout.strip().lstrip("v")
        # v1 (the Python docker-compose) lacks the spec features this file uses.
        if probe.returncode == 0 and version and not version.startswith("1."):
            return command
    return None


def run_compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no docker compose v2 (plugin or standalone binary) on this machine")
    # A clean environment: the caller's variables (and ./.env) must not leak in.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(env_file.parent)}
    return subprocess.run(
        [
            *command,
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_env(path: Path, env: Mapping[str, str]) -> Path:
    path.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    return path


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    result = run_compose(
        write_env(tmp_path / "staging.env", dummy_env()), "config", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert set(config["services"]) == EXPECTED_SERVICES
    api_env = config["services"]["api"]["environment"]
    assert api_env["STORAGE_BACKEND"] == "s3"
    # Unset provider keys stay unset (null), never "".
    assert api_env.get("FAL_KEY") is None and api_env.get("REPLICATE_API_TOKEN") is None
    assert config["services"]["migrate"]["healthcheck"] == {"disable": True}


def test_docker_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    example = tmp_path / "example.env"
    shutil.copy(ENV_EXAMPLE, example)
    result = run_compose(example, "config", "-q")
    assert result.returncode != 0
    assert "in .env" in result.stderr


def test_staging_temporal_is_tuned_like_the_dev_server(
    services: dict[str, dict[str, Any]],
) -> None:
    temporal = services["temporal"]
    target = f"/etc/temporal/{environment_of(temporal)['DYNAMIC_CONFIG_FILE_PATH']}"
    mounts = {
        str(volume).split(":")[1]: str(volume).split(":")[0] for volume in temporal["volumes"]
    }
    assert target in mounts, f"nothing is mounted at {target}"
    staged = yaml.safe_load((ROOT / mounts[target]).read_text())
    staging = {key: entries[0]["value"] for key, entries in staged.items()}
    flags = DEV_SERVER_TUNING
    dev = {}
    for flag, value in zip(flags[::2], flags[1::2], strict=True):
        assert flag == "--dynamic-config-value"
        key, _, raw = value.partition("=")
        dev[key] = yaml.safe_load(raw)
    assert staging == dev


# ------------------------------------------------------------------------------------
# One Temporal server version: the image here, the binary the topology tests build
# ------------------------------------------------------------------------------------
def setup_sh_server_version() -> str:
    match = re.search(r'^TEMPORAL_SERVER_VERSION="([^"]+)"$', SETUP_SH.read_text(), re.M)
    assert match, "scripts/setup.sh no longer pins TEMPORAL_SERVER_VERSION"
    return match.group(1)


def test_compose_runs_the_server_version_the_tests_build(
    services: dict[str, dict[str, Any]],
) -> None:
    """The staging images run the very server (and schema) the topology tests prove."""
    version = setup_sh_server_version()
    assert services["temporal"]["image"] == f"temporalio/server:{version}"
    # admin-tools tags read <server>-tctl-<tctl>-cli-<cli>: the server part must match,
    # since its temporal-sql-tool and schema files belong to that server version.
    for name in ("temporal-schema", "temporal-setup", "temporal-admin-tools"):
        image = services[name]["image"]
        repository, _, tag = image.partition(":")
        assert repository == "temporalio/admin-tools", f"{name}: {image}"
        assert tag.split("-", 1)[0] == version, f"{name}: {image} is not server {version}"


def test_staging_runs_the_server_image_with_a_schema_job(
    services: dict[str, dict[str, Any]],
) -> None:
    """Not auto-setup (a development image): the schema is installed, then updated to the
    server's version, for both stores, before the server starts."""
    assert "auto-setup" not in services["temporal"]["image"]
    assert services["temporal"]["depends_on"] == {
        "temporal-schema": {"condition": "service_completed_successfully"}
    }
    env = environment_of(services["temporal-schema"])
    assert env["SQL_PLUGIN"] == environment_of(services["temporal"])["DB"] == "postgres12"
    lines = [line.strip() for line in script_text(services["temporal-schema"]).splitlines()]
    steps = [line for line in lines if line.startswith("temporal-sql-tool")]
    assert steps == [
        'temporal-sql-tool --db "$DBNAME" setup-schema -v 0.0',
        'temporal-sql-tool --db "$DBNAME" update-schema -d "$schema/temporal/versioned"',
        'temporal-sql-tool --db "$VISIBILITY_DBNAME" setup-schema -v 0.0',
        'temporal-sql-tool --db "$VISIBILITY_DBNAME" update-schema'
        ' -d "$schema/visibility/versioned"',
    ]
    assert "schema=/etc/temporal/schema/postgresql/v12" in lines
