"""Every /api route, every kind of caller: anonymous, a stranger, the owner (or an admin).

The routes come from the app's OpenAPI document, so a route added later is checked
without editing this file. Path parameters get the owner's real ids where the name says
what they are (RESOURCES), else a random id; request bodies are built from the route's
schema (BODIES overrides the few a schema cannot describe). Exceptions are listed below,
each with its reason. Routes hidden from the schema (include_in_schema=False) are not
seen, so /api routes stay in it.

Expectations:
- no token: 401;
- another user's token: 404 on routes about someone's resource (a path parameter), so
  ids leak nothing; on /api/admin, 403;
- the owner's token (an admin's on /api/admin): neither 401 nor 404 (nor 403 on admin).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from api.main import create_app
from core.settings import Settings
from tests.conftest import Stack

# Not about anyone's data.
SKIPPED_PREFIXES = ("/api/health",)
# Open to anyone on purpose.
PUBLIC = {
    ("GET", "/api/tokens"),  # the design tokens the UI and covers share
    # Signed by the provider instead: tests/e2e/test_provider_webhooks.py checks refusals.
    ("POST", "/api/provider-webhooks/{provider}"),
}
# Bodies the schema cannot make (patterns, documents) or that must be harmless.
BODIES: dict[tuple[str, str], Any] = {
    # A valid filter that matches nothing: the admin call cancels no one's job.
    ("POST", "/api/admin/jobs/cancel"): {"user_id": "00000000-0000-0000-0000-000000000000"},
}


@pytest.fixture
def stack_overrides() -> dict[str, Any]:
    """Every feature flag on, so flagged routes answer for real instead of 403."""
    return {
        name: True
        for name, spec in Settings.model_fields.items()
        if spec.annotation is bool and (name.startswith("feature_") or name.endswith("_enabled"))
    }


@dataclass
class Owner:
    user_id: uuid.UUID
    auth: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)


# Path parameter name -> the owner's id for it.
RESOURCES: dict[str, Callable[[Owner], str]] = {
    "track_id": lambda owner: owner.ids["track_id"],
    "job_id": lambda owner: owner.ids["job_id"],
    "user_id": lambda owner: str(owner.user_id),
}


@dataclass(frozen=True)
class Case:
    method: str
    template: str
    path_params: tuple[tuple[str, dict[str, Any]], ...]
    query: dict[str, Any]
    body: Any

    @property
    def admin(self) -> bool:
        return self.template.startswith("/api/admin")

    @property
    def public(self) -> bool:
        return (self.method, self.template) in PUBLIC

    @property
    def knows_all_params(self) -> bool:
        return all(name in RESOURCES for name, _ in self.path_params)

    def url(self, owner: Owner) -> str:
        path = self.template
        for name, schema in self.path_params:
            if name in RESOURCES:
                value = RESOURCES[name](owner)
            elif schema.get("format") == "uuid":
                value = str(uuid.uuid4())
            else:
                value = uuid.uuid4().hex
            path = path.replace("{" + name + "}", value)
        return path

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def example(schema: dict[str, Any], doc: dict[str, Any]) -> Any:
    """A small value that satisfies `schema` (required fields only)."""
    schema = _resolve(schema, doc)
    for key in ("example", "default", "const"):
        if key in schema:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [_resolve(s, doc) for s in schema[key]]
            usable = [s for s in options if s.get("type") != "null"] or options
            return example(usable[0], doc)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        return {name: example(properties[name], doc) for name in schema.get("required", [])}
    if kind == "array":
        return [example(schema.get("items", {}), doc) for _ in range(schema.get("minItems", 0))]
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1)
        return min(int(low), int(schema.get("maximum", low)))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return min(float(low) + 0.5, float(schema.get("maximum", float(low) + 0.5)))
    if kind == "boolean":
        return False
    if kind == "string":
        if schema.get("format") == "uuid":
            return str(uuid.uuid4())
        if schema.get("format") == "uri":
            return "https://example.com/"
        return "x" * max(1, schema.get("minLength", 1))
    return None


def api_cases(stack: Stack) -> list[Case]:
    doc = create_app(stack.settings).openapi()
    cases = []
    for template, operations in doc["paths"].items():
        if not template.startswith("/api") or template.startswith(SKIPPED_PREFIXES):
            continue
        for method, operation in operations.items():
            parameters = operation.get("parameters", [])
            path_params = tuple(
                (p["name"], _resolve(p.get("schema", {}), doc))
                for p in parameters
                if p["in"] == "path"
            )
            query = {
                p["name"]: example(p.get("schema", {}), doc)
                for p in parameters
                if p["in"] == "query" and p.get("required")
            }
            body = BODIES.get((method.upper(), template))
            content = operation.get("requestBody", {}).get("content", {})
            if body is None and "application/json" in content:
                body = example(content["application/json"]["schema"], doc)
            cases.append(Case(method.upper(), template, path_params, query, body))
    return cases


async def _call(
    stack: Stack, case: Case, owner: Owner, auth: dict[str, str] | None
) -> httpx.Response:
    return await stack.http.request(
        case.method,
        case.url(owner),
        params=case.query,
        json=case.body,
        headers=auth or {},
    )


async def test_every_api_route_refuses_strangers_and_serves_owners(stack: Stack) -> None:
    owner_id, owner_auth = await stack.user(credits=100)
    _, stranger = await stack.user(credits=100)
    _, admin = await stack.user(credits=100, admin=True)
    owner = Owner(owner_id, owner_auth)
    created = await stack.create_track(owner_auth, duration_s=5)
    owner.ids.update(track_id=created["track_id"], job_id=created["job_id"])
    # Finished, so the owner's event stream ends and cover routes accept the track.
    job = await stack.wait_for_job(created["job_id"], owner_auth)
    assert job["status"] == "COMPLETE"

    cases = api_cases(stack)
    seen = {str(case) for case in cases}
    for known in (
        "POST /api/tracks",
        "GET /api/tracks/{track_id}",
        "GET /api/jobs/{job_id}",
        "POST /api/jobs/{job_id}/cancel",
        "GET /api/me",
        "GET /api/admin/jobs/stuck",
        "POST /api/admin/users/{user_id}/credits",
    ):
        assert known in seen, f"{known} missing: the route listing is broken"

    failures: list[str] = []
    for case in cases:
        anonymous = await _call(stack, case, owner, None)
        if case.public:
            if anonymous.status_code == 401:
                failures.append(f"{case}: public, but 401 without a token")
        elif anonymous.status_code != 401:
            failures.append(f"{case}: no token -> {anonymous.status_code}, want 401")

        if case.public:
            continue
        other = await _call(stack, case, owner, stranger)
        if case.admin:
            want: str = "403"
            ok = other.status_code == 403
        elif case.path_params:
            want = "404"
            ok = other.status_code == 404
        else:  # about the caller's own data (/api/me, list, create)
            want = "not 401/404"
            ok = other.status_code not in (401, 404)
        if not ok:
            failures.append(
                f"{case}: another user's token -> {other.status_code} {other.text[:200]}, "
                f"want {want} (a body it cannot validate? add one to BODIES)"
            )

    # Owners last, and deletions after everything else, so no check removes what a later
    # one needs.
    for case in sorted(cases, key=lambda c: c.method == "DELETE"):
        if case.public:
            continue
        answer = await _call(stack, case, owner, admin if case.admin else owner_auth)
        refused = {401, 403} if case.admin else {401}
        if case.knows_all_params:
            refused.add(404)  # it is the owner's own resource: it must be found
        if answer.status_code in refused:
            failures.append(
                f"{case}: {'admin' if case.admin else 'owner'} -> "
                f"{answer.status_code} {answer.text[:200]}"
            )

    assert not failures, "\n".join(failures)
