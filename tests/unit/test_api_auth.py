"""Who may call what: every route against every role and against no token, the cross-site
refusals, and what the open probes tell an anonymous caller. Fake deps, no servers: a call
that gets past authorization answers 503 (the parts behind it are missing), which is how
these tests see that it got in."""

from __future__ import annotations

import pytest

from engine.api import create_app
from engine.api.auth import OPEN, PERMISSIONS, SIGNED
from engine.auth import GRANTS, Permission, Role
from tests.unit.test_api_app import call, deps

APP = create_app(deps())
# What the app serves, as its OpenAPI document lists it (every route is in the schema).
ROUTES = sorted((method.upper(), path) for path, operations in APP.openapi()["paths"].items()
                for method in operations)
SAMPLE = {"{workflow_id}": "w1", "{strategy_id}": "s1", "{execution_id}": "exec-1", "{incident_id}": "inc-1",
          "{name}": "someone", "{approval_id}": "appr-1"}

# The matrix the README shows, written out: which roles may call each kind of route.
MAY = {
    Permission.READ: {Role.VIEWER, Role.OPERATOR, Role.EDITOR, Role.ADMIN},
    Permission.INGEST: {Role.INGEST, Role.OPERATOR, Role.ADMIN},
    Permission.EXECUTE: {Role.OPERATOR, Role.ADMIN},
    Permission.APPROVE: {Role.OPERATOR, Role.ADMIN},
    Permission.EDIT_RULES: {Role.EDITOR, Role.ADMIN},
    Permission.ADMIN: {Role.ADMIN},
}


def url(path: str) -> str:
    for placeholder, value in SAMPLE.items():
        path = path.replace(placeholder, value)
    return path


def test_every_route_is_in_the_permission_table_and_nothing_else_is() -> None:
    guarded = {r for r in ROUTES if r not in OPEN and r not in SIGNED and r[0] != "HEAD"}
    assert guarded == set(PERMISSIONS)
    assert {r for r in ROUTES if r in SIGNED} == set(SIGNED)
    assert {r for r in ROUTES if r in OPEN} == set(OPEN)


def test_the_grants_are_the_documented_matrix() -> None:
    for permission, roles in MAY.items():
        assert {role for role in Role if permission in GRANTS[role]} == roles, permission


@pytest.mark.parametrize(("method", "path"), sorted(PERMISSIONS))
def test_each_route_against_each_role_and_no_token(method: str, path: str) -> None:
    needed = PERMISSIONS[(method, path)]
    body = {"json": {}} if method in ("POST", "PUT") else {}
    anonymous = call(APP, method, url(path), token=None, **body)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    forged = call(APP, method, url(path), token="not-a-token", **body)
    assert forged.status_code == 401, forged.text
    for role in Role:
        answer = call(APP, method, url(path), token=f"{role}-token", **body)
        if role in MAY[needed]:
            assert answer.status_code not in (401, 403), (role, answer.text)
        else:
            assert answer.status_code == 403, (role, answer.text)
            assert str(role) in answer.json()["detail"]


def test_cross_site_writes_are_refused_before_anything_else() -> None:
    admin = {"token": "admin-token"}
    evil = call(APP, "POST", "/api/v1/workflows", json={}, headers={"Origin": "http://evil.example"}, **admin)
    assert evil.status_code == 403 and "cross-origin" in evil.json()["detail"]
    site = call(APP, "POST", "/api/v1/events", json={}, headers={"Sec-Fetch-Site": "cross-site"}, **admin)
    assert site.status_code == 403
    plain = call(APP, "POST", "/api/v1/events", content=b'{"kind": "Event"}',
                 headers={"Content-Type": "text/plain"}, **admin)
    assert plain.status_code == 415
    form = call(APP, "POST", "/api/v1/strategies", content=b"a=1",
                headers={"Content-Type": "application/x-www-form-urlencoded"}, **admin)
    assert form.status_code == 415
    # The API's own origin, an allowed one, NDJSON for events, and reads from anywhere: fine.
    own = call(APP, "POST", "/api/v1/workflows", json={}, headers={"Origin": "http://api.test"}, **admin)
    assert own.status_code == 503
    console = create_app(deps(allowed_origins=frozenset({"https://console.example"})))
    allowed = call(console, "POST", "/api/v1/workflows", json={}, headers={"Origin": "https://console.example"},
                   **admin)
    assert allowed.status_code == 503
    ndjson = call(APP, "POST", "/api/v1/events", content=b"{}\n",
                  headers={"Content-Type": "application/x-ndjson"}, **admin)
    assert ndjson.status_code == 503
    read = call(APP, "GET", "/api/v1/workflows", headers={"Origin": "http://evil.example"}, **admin)
    assert read.status_code == 503


def test_readyz_tells_an_anonymous_caller_only_whether_it_is_ready() -> None:
    async def ready() -> dict:
        return {"ready": True, "checks": {"postgres": "ok"}, "reasons": [], "replica": "r-secret",
                "rules": {"problems": ["rules/x.yaml:3: bad"]}}

    app = create_app(deps(readiness=ready))
    anonymous = call(app, "GET", "/readyz", token=None)
    assert anonymous.status_code == 200 and anonymous.json() == {"ready": True}
    assert call(app, "GET", "/readyz", token="ingest-token").json() == {"ready": True}
    assert call(app, "GET", "/readyz", token="not-a-token").json() == {"ready": True}
    detailed = call(app, "GET", "/readyz", token="viewer-token").json()
    assert detailed["replica"] == "r-secret" and detailed["checks"] == {"postgres": "ok"}
    not_ready = call(create_app(deps()), "GET", "/readyz", token=None)
    assert not_ready.status_code == 503 and not_ready.json() == {"ready": False}


def test_metrics_are_open_unless_configured_otherwise() -> None:
    assert call(APP, "GET", "/metrics", token=None).status_code == 200
    closed = create_app(deps(metrics_public=False))
    assert call(closed, "GET", "/metrics", token=None).status_code == 401
    assert call(closed, "GET", "/metrics", token="ingest-token").status_code == 403
    assert call(closed, "GET", "/metrics", token="viewer-token").status_code == 200
    assert call(APP, "GET", "/healthz", token=None).json() == {"status": "ok"}


def test_the_openapi_document_declares_the_bearer_scheme() -> None:
    spec = call(APP, "GET", "/openapi.json", token=None).json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values()), schemes
    assert spec["paths"]["/api/v1/workflows"]["post"]["security"]
