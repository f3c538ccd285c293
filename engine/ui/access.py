"""Who may see and do what in the web console: its own route table, read against the API's.

Every console route is in :data:`UI_PERMISSIONS` (a permission of :class:`engine.auth.Permission`)
or in :data:`UI_OPEN` (the login page and the static files); a route in neither is refused
(fail closed), and ``tests/unit/test_ui_access.py`` keeps the table and the app's routes equal
and tries every route with every role. A console write needs exactly the permission of the
API route that does the same thing: those rows are looked up in :data:`engine.api.auth.PERMISSIONS`,
not written twice.

The credential is the session cookie (:func:`engine.api.auth._from_cookie`: the token it
was opened with, its name and current role). A write also needs:

- the session's CSRF token in the form's ``csrf`` field (or the ``X-CSRF-Token`` header, as
  htmx sends it), checked by ``_from_cookie`` with everything else;
- a form body (``application/x-www-form-urlencoded``) of at most :data:`MAX_FORM` bytes,
  read here with a bound before anything else looks at it;
- no sign of another site: ``Origin`` this host or one of ``http.allowed_origins``, and not
  ``Sec-Fetch-Site: cross-site`` (SameSite=Strict already keeps the cookie off such requests).

No session is a redirect to ``/ui/login`` for a page and a 401 for a write; a role without the
permission is a 403 page saying which permission it lacks.
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from engine.api.auth import PERMISSIONS, SAFE_METHODS, P, _from_cookie
from engine.api.body import read_limited
from engine.api.deps import Deps
from engine.auth import Permission, Principal

UI = "/ui"
MAX_FORM = 1024 * 1024          # a rule being edited is the largest form
MAX_FIELDS = 50
FORM_TYPE = "application/x-www-form-urlencoded"

READ, EDIT, ADMIN = Permission.READ, Permission.EDIT_RULES, Permission.ADMIN

# (method, route path) -> the permission it needs.
UI_PERMISSIONS: dict[tuple[str, str], Permission] = {
    ("GET", f"{UI}/"): READ,
    ("GET", f"{UI}/incidents"): READ,
    ("GET", f"{UI}/incidents/{{incident_id}}"): READ,
    ("GET", f"{UI}/executions/{{execution_id}}"): READ,
    ("GET", f"{UI}/workflows/{{workflow_id}}"): READ,
    ("GET", f"{UI}/rules"): READ,
    ("GET", f"{UI}/rules/{{kind}}/{{rule_id}}"): READ,
    ("GET", f"{UI}/approvals"): READ,
    ("GET", f"{UI}/experiments"): READ,
    # The editor: checking a draft is part of editing it; saving is the API's create/replace.
    ("GET", f"{UI}/editor/{{kind}}"): EDIT,
    ("POST", f"{UI}/editor/{{kind}}/check"): EDIT,
    ("POST", f"{UI}/editor/{{kind}}/save"): PERMISSIONS[("POST", f"{P}/workflows")],
    ("POST", f"{UI}/approvals/{{approval_id}}/approve"): PERMISSIONS[
        ("POST", f"{P}/approvals/{{approval_id}}/approve")],
    ("POST", f"{UI}/approvals/{{approval_id}}/deny"): PERMISSIONS[
        ("POST", f"{P}/approvals/{{approval_id}}/deny")],
    ("GET", f"{UI}/audit"): PERMISSIONS[("GET", f"{P}/audit")],
}
# No session needed: logging in, and the stylesheet and script every page loads.
UI_OPEN = frozenset({("GET", f"{UI}/login"), ("POST", f"{UI}/login")})
UI_STATIC = f"{UI}/static"
# A session (and its CSRF token), but no permission: logging out.
UI_SESSION_ONLY = frozenset({("POST", f"{UI}/logout")})


class ConsoleError(Exception):
    """An HTML error page (or a redirect to the login page): raised by the console's routes."""

    def __init__(self, status: int, message: str, *, login: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.login = login


def route_path(request: Request) -> str:
    return str(getattr(request.scope.get("route"), "path", ""))


def refuse_cross_site(request: Request, deps: Any) -> None:
    origin = request.headers.get("origin")
    if origin is not None:
        own = {f"{scheme}://{request.headers.get('host', '')}" for scheme in ("http", "https")}
        if origin not in own and origin not in deps.allowed_origins:
            raise ConsoleError(403, "a request from another site was refused")
    elif request.headers.get("sec-fetch-site") == "cross-site":
        raise ConsoleError(403, "a request from another site was refused")


async def read_form(request: Request) -> dict[str, str]:
    """The form of a console write (first value of each field), read within MAX_FORM bytes;
    kept in ``request.state.form``, its ``csrf`` field in ``request.state.csrf``."""
    cached: dict[str, str] | None = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length")
    empty = not request.headers.get("transfer-encoding") and length in (None, "0")
    if media != FORM_TYPE and not empty:
        raise ConsoleError(415, f"a console form is {FORM_TYPE}")
    try:
        body = await read_limited(request, MAX_FORM)
        fields = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True,
                                       max_num_fields=MAX_FIELDS)
    except HTTPException as exc:
        raise ConsoleError(exc.status_code, str(exc.detail)) from None
    except (UnicodeDecodeError, ValueError):
        raise ConsoleError(400, "the form is not UTF-8 or has too many fields") from None
    form = {name: values[0].replace("\x00", "") for name, values in fields.items() if values}
    request.state.form = form
    request.state.csrf = form.get("csrf")
    return form


async def console_user(request: Request, deps: Deps) -> Principal:
    """The dependency of every console route but the open ones: a session whose role has the
    route's permission (and, for a write, its CSRF token and a bounded form)."""
    key = (request.method, route_path(request))
    if request.method not in SAFE_METHODS:
        refuse_cross_site(request, deps)
        await read_form(request)
    try:
        principal = await _from_cookie(request, deps)
    except HTTPException as exc:
        raise ConsoleError(exc.status_code, str(exc.detail)) from None
    if principal is None:
        raise ConsoleError(401, "log in to go on", login=True)
    if key in UI_SESSION_ONLY:
        return principal
    needed = UI_PERMISSIONS.get(key)
    if needed is None:
        raise ConsoleError(403, "this page is not open to any role")
    if not principal.may(needed):
        raise ConsoleError(403, f"role {principal.role} may not {needed.value.replace('_', ' ')} "
                                f"(token {principal.name!r})")
    return principal


User = Annotated[Principal, Depends(console_user)]
