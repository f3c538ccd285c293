"""Logging in with an API token, and out.

``GET /ui/login`` sets a login CSRF cookie (random, HttpOnly, SameSite=Strict) and puts the
same value in the form; ``POST /ui/login`` needs both to match (double submit: another site
can neither read the cookie nor set the field), checks the token exactly as the API does
(``ApiDeps.auth.verify``), refuses a role that may not read (``ingest``), and opens a session
(:mod:`engine.storage.sessions`) whose id goes back in the session cookie: HttpOnly,
SameSite=Strict, Path=/, Secure when the console is reached over https. The token itself is
never kept, shown or logged. ``POST /ui/logout`` (session and CSRF token) deletes the session.
Both are on the audit trail (``console.login``, ``console.logout``).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from engine.api.auth import SESSION_COOKIE
from engine.api.deps import Deps
from engine.auth import Permission, Principal, token_hash
from engine.ui.access import UI, ConsoleError, User, read_form, refuse_cross_site
from engine.ui.render import HEADERS, page

log = logging.getLogger(__name__)

LOGIN_COOKIE = "aetherius_login"
MAX_TOKEN = 200

router = APIRouter(prefix=UI, include_in_schema=False)


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a console path only (no other site, no scheme)."""
    if value and value.startswith(f"{UI}/") and not value.startswith("//") and "\\" not in value \
            and not value.startswith(f"{UI}/login"):
        return value
    return f"{UI}/incidents"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def _login_page(request: Request, status: int = 200, error: str | None = None,
                next_path: str | None = None) -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or len(nonce) > 100:
        nonce = secrets.token_urlsafe(24)
    response = page(request, "login.html", None, status=status, error=error, nonce=nonce,
                    next_path=safe_next(next_path or request.query_params.get("next")))
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path=f"{UI}/login", httponly=True,
                        samesite="strict", secure=_secure(request))
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login(request: Request, deps: Deps) -> Response:
    refuse_cross_site(request, deps)
    form = await read_form(request)
    nonce = request.cookies.get(LOGIN_COOKIE) or ""
    next_path = form.get("next")
    if not nonce or not hmac.compare_digest(nonce.encode(), form.get("csrf", "").encode()):
        return _login_page(request, 403, "the login form expired: try again", next_path)
    token = form.get("token", "").strip()
    if deps.sessions is None:
        return _login_page(request, 503, "console logins are not available yet (the service is starting)",
                           next_path)
    principal = await deps.auth.verify(token) if 0 < len(token) <= MAX_TOKEN else None
    if principal is None:
        return _login_page(request, 401, "that token is unknown, revoked or expired", next_path)
    if not principal.may(Permission.READ):
        return _login_page(request, 403, f"role {principal.role} may not read: the console is for reading "
                                         "roles (viewer, operator, editor, admin)", next_path)
    client = request.client.host if request.client else None
    principal = Principal(principal.kind, principal.name, principal.role, client)
    session_id = await deps.sessions.open(principal, token_hash(token))
    if deps.audit is not None:
        await deps.audit.record(principal, "console.login", "token", principal.name)
    log.info("Console login by %s from %s", principal.label, client)
    response = RedirectResponse(safe_next(next_path), status_code=303, headers=HEADERS)
    response.set_cookie(SESSION_COOKIE, session_id, path="/", httponly=True, samesite="strict",
                        secure=_secure(request))
    response.delete_cookie(LOGIN_COOKIE, path=f"{UI}/login")
    return response


@router.post("/logout")
async def logout(request: Request, deps: Deps, who: User) -> Response:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id and deps.sessions is not None:
        await deps.sessions.close(session_id)
    if deps.audit is not None:
        await deps.audit.record(who, "console.logout", "token", who.name)
    response = RedirectResponse(f"{UI}/login", status_code=303, headers=HEADERS)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def error_page(request: Request, exc: ConsoleError) -> Response:
    if exc.login and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{UI}/login?next={quote(target, safe='/')}", status_code=303,
                                headers=HEADERS)
    who = getattr(request.state, "principal", None)
    return page(request, "error.html", who, status=exc.status, message=exc.message)
