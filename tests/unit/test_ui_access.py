"""Who may see and do what in the web console: every console route against every role and
against no session, the CSRF token and the other-site refusals on writes, the session as an
API credential, and the console kept out of the OpenAPI document. Fake deps, no servers: a
call that gets past authorization answers 503 (the parts behind it are missing), or renders
a page that needs none."""

from __future__ import annotations

import pytest
from starlette.routing import Mount

from engine.api import create_app
from engine.api.auth import PERMISSIONS, SESSION_COOKIE
from engine.auth import Permission, Principal, Role, csrf_token
from engine.ui import install, login, pages, rules
from engine.ui.access import UI_OPEN, UI_PERMISSIONS, UI_SESSION_ONLY
from tests.unit.test_api_app import call, deps
from tests.unit.test_api_auth import MAY

SAMPLE = {"{incident_id}": "inc-1", "{execution_id}": "exec-1", "{workflow_id}": "w1", "{kind}": "workflow",
          "{rule_id}": "w1", "{approval_id}": "appr-1"}


class FakeSessions:
    """One session per role: ``<role>-session``; anything else is no session."""

    async def open(self, principal: Principal, token_digest: str) -> str:
        return f"{principal.role}-session"

    async def principal(self, session_id: str) -> Principal | None:
        role = session_id.removesuffix("-session")
        return Principal("token", f"{role}-user", Role(role)) if role in set(Role) else None

    async def close(self, session_id: str) -> None:
        return None


APP = install(create_app(deps(sessions=FakeSessions())))
ROUTERS = (login.router, pages.router, rules.router)
# What the console serves: the routes of its routers (the app includes them as they are).
ROUTES = sorted((method, route.path) for router in ROUTERS for route in router.routes
                for method in getattr(route, "methods", ()) if method != "HEAD")


def url(path: str) -> str:
    for placeholder, value in SAMPLE.items():
        path = path.replace(placeholder, value)
    return path


def session(role: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={role}-session"}


def form(role: str, **fields: str) -> dict[str, object]:
    return {"data": {"csrf": csrf_token(f"{role}-session"), **fields}}


def test_every_console_route_is_in_a_table_and_none_is_in_the_openapi_document() -> None:
    assert set(ROUTES) == set(UI_PERMISSIONS) | UI_OPEN | UI_SESSION_ONLY
    assert not any(path.startswith("/ui") for path in APP.openapi()["paths"])
    assert [r.path for r in APP.routes if isinstance(r, Mount)] == ["/ui/static"]   # open: css, htmx


def test_console_writes_need_what_the_api_route_doing_the_same_needs() -> None:
    assert UI_PERMISSIONS[("POST", "/ui/approvals/{approval_id}/approve")] == \
        PERMISSIONS[("POST", "/api/v1/approvals/{approval_id}/approve")] == Permission.APPROVE
    assert UI_PERMISSIONS[("POST", "/ui/editor/{kind}/save")] == PERMISSIONS[("POST", "/api/v1/workflows")]
    assert UI_PERMISSIONS[("GET", "/ui/audit")] == PERMISSIONS[("GET", "/api/v1/audit")] == Permission.ADMIN


@pytest.mark.parametrize(("method", "path"), sorted(UI_PERMISSIONS))
def test_each_console_route_against_each_role_and_no_session(method: str, path: str) -> None:
    needed = UI_PERMISSIONS[(method, path)]
    anonymous = call(APP, method, url(path), token=None, **(form("none") if method == "POST" else {}))
    if method == "GET":
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/ui/login?next=")
    else:
        assert anonymous.status_code == 401, anonymous.text
    for role in Role:
        extra = form(str(role)) if method == "POST" else {}
        answer = call(APP, method, url(path), token=None, headers=session(str(role)), **extra)
        if role in MAY[needed]:
            assert answer.status_code not in (401, 403), (role, answer.text)
        else:
            assert answer.status_code == 403, (role, answer.text)
            assert f"role {role} may not" in answer.text
        assert answer.headers.get("content-security-policy", "").startswith("default-src 'none'") \
            or answer.status_code == 303


@pytest.mark.parametrize(("method", "path"), sorted(r for r in UI_PERMISSIONS if r[0] == "POST"))
def test_a_console_write_needs_the_csrf_token_a_form_and_this_site(method: str, path: str) -> None:
    admin = session("admin")
    missing = call(APP, method, url(path), token=None, headers=admin, data={"comment": "x"})
    assert missing.status_code == 403 and "CSRF" in missing.text
    other = call(APP, method, url(path), token=None, headers=admin,
                 data={"csrf": csrf_token("viewer-session")})
    assert other.status_code == 403                  # another session's token
    evil = call(APP, method, url(path), token=None, headers={**admin, "Origin": "http://evil.example"},
                **form("admin"))
    assert evil.status_code == 403 and "another site" in evil.text
    cross = call(APP, method, url(path), token=None, headers={**admin, "Sec-Fetch-Site": "cross-site"},
                 **form("admin"))
    assert cross.status_code == 403
    as_json = call(APP, method, url(path), token=None, headers=admin,
                   json={"csrf": csrf_token("admin-session")})
    assert as_json.status_code == 415
    fine = call(APP, method, url(path), token=None, headers={**admin, "Origin": "http://api.test"},
                **form("admin"))
    assert fine.status_code == 503, fine.text        # past every check


def test_logout_needs_the_session_and_its_csrf_token() -> None:
    assert call(APP, "POST", "/ui/logout", token=None, data={}).status_code == 401
    assert call(APP, "POST", "/ui/logout", token=None, headers=session("viewer"), data={}).status_code == 403
    out = call(APP, "POST", "/ui/logout", token=None, headers=session("viewer"), **form("viewer"))
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert f'{SESSION_COOKIE}=""' in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]


def test_the_session_is_an_api_credential_with_the_same_roles_and_a_csrf_header_for_writes() -> None:
    assert call(APP, "GET", "/api/v1/incidents", token=None, headers=session("viewer")).status_code == 503
    assert call(APP, "GET", "/api/v1/audit", token=None, headers=session("viewer")).status_code == 403
    assert call(APP, "GET", "/api/v1/incidents", token=None, headers=session("nobody")).status_code == 401
    operator = session("operator")
    no_csrf = call(APP, "POST", "/api/v1/events", token=None, headers=operator, json={})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
    ok = call(APP, "POST", "/api/v1/events", token=None, json={},
              headers={**operator, "X-CSRF-Token": csrf_token("operator-session")})
    assert ok.status_code == 503


def test_login_needs_the_form_nonce_and_never_sends_anyone_elsewhere() -> None:
    page = call(APP, "GET", "/ui/login?next=//evil.example/x", token=None)
    assert page.status_code == 200 and "evil.example" not in page.text
    nonce = page.headers["set-cookie"].split("aetherius_login=")[1].split(";")[0]
    assert f'value="{nonce}"' in page.text and "HttpOnly" in page.headers["set-cookie"]
    forged = call(APP, "POST", "/ui/login", token=None, data={"csrf": "guess", "token": "admin-token"},
                  headers={"Cookie": f"aetherius_login={nonce}"})
    assert forged.status_code == 403
    done = call(APP, "POST", "/ui/login", token=None,
                data={"csrf": nonce, "token": "admin-token", "next": "https://evil.example/"},
                headers={"Cookie": f"aetherius_login={nonce}"})
    assert done.status_code == 303 and done.headers["location"] == "/ui/incidents"
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "admin-token" not in cookie
    ingest = call(APP, "POST", "/ui/login", token=None, data={"csrf": nonce, "token": "ingest-token"},
                  headers={"Cookie": f"aetherius_login={nonce}"})
    assert ingest.status_code == 403 and "may not read" in ingest.text
    wrong = call(APP, "POST", "/ui/login", token=None, data={"csrf": nonce, "token": "nope"},
                 headers={"Cookie": f"aetherius_login={nonce}"})
    assert wrong.status_code == 401 and "nope" not in wrong.text


def test_the_experiments_page_needs_the_service() -> None:
    answer = call(APP, "GET", "/ui/experiments", token=None, headers=session("viewer"))
    assert answer.status_code == 503



def test_every_template_compiles() -> None:
    from engine.ui.render import ENV
    names = ENV.list_templates()
    assert "incident.html" in names and len(names) >= 14
    for name in names:
        ENV.get_template(name)
