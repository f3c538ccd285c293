"""Authentication and authorization of every route, in one table.

Every request but ``/healthz``, Slack's signed ``/api/v1/approvals/slack`` (and ``/readyz``,
which without a token says only whether the replica is ready, and ``/metrics`` while
``http.metrics_public`` is true) must carry
``Authorization: Bearer <token>``: no token or an unknown, revoked or expired one is 401,
a token whose role lacks the route's permission is 403. :data:`PERMISSIONS` maps each
route to the permission it needs; a route missing from it is refused (fail closed), and a
test keeps it and the app's routes equal.

**Cross-site requests.** Writes (any method but GET/HEAD/OPTIONS) are refused with 403 when
the browser says they come from another site (``Origin`` not this host nor one of
``http.allowed_origins``, or ``Sec-Fetch-Site: cross-site``), and a write's body must be
JSON (NDJSON for events): a ``text/plain`` form post is 415. A bearer token is never sent
by a browser on its own, so this is defence in depth for tokens.

**The web console's session** (:mod:`engine.ui`) is the other credential: the cookie
:data:`SESSION_COOKIE` (HttpOnly, SameSite=Strict), read by :func:`_from_cookie` when there
is no bearer token. It stands for the token it was opened with (same name, same role, so the
same rows of :data:`PERMISSIONS` apply), and every write made with it must also carry the
session's CSRF token (:func:`engine.auth.csrf_token`): the ``X-CSRF-Token`` header, or the
``csrf`` field of a console form (put in ``request.state.csrf`` by the console, which reads
its forms within a bound). A write without it is 403.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.api.deps import Deps
from engine.api.models import Message
from engine.auth import Permission, Principal, csrf_matches

P = "/api/v1"
READ, INGEST, EXECUTE = Permission.READ, Permission.INGEST, Permission.EXECUTE
EDIT, ADMIN, APPROVE = Permission.EDIT_RULES, Permission.ADMIN, Permission.APPROVE

# (method, route path) -> the permission it needs. /healthz, /readyz and /metrics are open
# (see the module docstring) and are not listed.
PERMISSIONS: dict[tuple[str, str], Permission] = {
    ("GET", f"{P}/workflows"): READ,
    ("GET", f"{P}/workflows/{{workflow_id}}"): READ,
    ("POST", f"{P}/workflows"): EDIT,
    ("PUT", f"{P}/workflows/{{workflow_id}}"): EDIT,
    ("DELETE", f"{P}/workflows/{{workflow_id}}"): EDIT,
    ("GET", f"{P}/strategies"): READ,
    ("GET", f"{P}/strategies/{{strategy_id}}"): READ,
    ("POST", f"{P}/strategies"): EDIT,
    ("PUT", f"{P}/strategies/{{strategy_id}}"): EDIT,
    ("DELETE", f"{P}/strategies/{{strategy_id}}"): EDIT,
    ("GET", f"{P}/workflows/{{workflow_id}}/versions"): READ,
    ("GET", f"{P}/workflows/{{workflow_id}}/versions/{{version}}"): READ,
    ("GET", f"{P}/workflows/{{workflow_id}}/versions/{{version}}/diff"): READ,
    ("POST", f"{P}/workflows/{{workflow_id}}/versions/{{version}}/restore"): EDIT,
    ("GET", f"{P}/strategies/{{strategy_id}}/versions"): READ,
    ("GET", f"{P}/strategies/{{strategy_id}}/versions/{{version}}"): READ,
    ("GET", f"{P}/strategies/{{strategy_id}}/versions/{{version}}/diff"): READ,
    ("POST", f"{P}/strategies/{{strategy_id}}/versions/{{version}}/restore"): EDIT,
    ("GET", f"{P}/experiments/{{strategy_id}}"): READ,
    ("POST", f"{P}/workflows/{{workflow_id}}/execute"): EXECUTE,
    ("GET", f"{P}/executions"): READ,
    ("GET", f"{P}/executions/{{execution_id}}"): READ,
    ("POST", f"{P}/executions/{{execution_id}}/cancel"): EXECUTE,
    ("GET", f"{P}/incidents"): READ,
    ("GET", f"{P}/incidents/{{incident_id}}"): READ,
    ("POST", f"{P}/events"): INGEST,
    ("GET", f"{P}/rules/status"): READ,
    ("POST", f"{P}/rules/reload"): EDIT,
    ("GET", f"{P}/tokens"): ADMIN,
    ("POST", f"{P}/tokens"): ADMIN,
    ("DELETE", f"{P}/tokens/{{name}}"): ADMIN,
    ("GET", f"{P}/audit"): ADMIN,
    ("GET", f"{P}/approvals"): READ,
    ("GET", f"{P}/approvals/{{approval_id}}"): READ,
    ("POST", f"{P}/approvals/{{approval_id}}/approve"): APPROVE,
    ("POST", f"{P}/approvals/{{approval_id}}/deny"): APPROVE,
}
OPEN = frozenset({("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")})
# Authenticated by a signature instead of a token: Slack's interactive buttons
# (``X-Slack-Signature``, checked by engine.api.approvals with approvals.slack.signing_secret).
SIGNED = frozenset({("POST", f"{P}/approvals/slack")})

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_COOKIE = "aetherius_session"
CSRF_HEADER = "X-CSRF-Token"

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "No token, or an unknown, revoked or expired one"},
    403: {"model": Message, "description": "The token's role may not do this, or a cross-site write"},
    415: {"model": Message, "description": "A write whose body is not JSON (NDJSON for events)"},
}
# Open routes read a token if there is one: authentication is optional there.
OPTIONAL_AUTH: dict[str, Any] = {"security": [{}, {"HTTPBearer": []}]}

bearer = HTTPBearer(auto_error=False, description="An API token: `aetherius token create NAME --role ROLE`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="aetherius"'})


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


async def identify(request: Request, deps: Deps, credentials: Credentials) -> Principal | None:
    """The principal of a request, or None if it carries no credentials (401 for bad ones)."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    if credentials is None:
        return await _from_cookie(request, deps)
    if credentials.scheme.lower() != "bearer":
        raise _unauthorized("use an Authorization: Bearer token")
    principal = await deps.auth.verify(credentials.credentials)
    if principal is None:
        raise _unauthorized("the token is unknown, revoked or expired")
    principal = dataclasses.replace(principal, client=_client(request))
    request.state.principal = principal
    return principal


async def _from_cookie(request: Request, deps: Deps) -> Principal | None:
    """The principal of the web console's session cookie, or None (no cookie, or a session
    that ended: logged out, expired, its token revoked). A write needs the session's CSRF
    token too (403 without it)."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id or deps.sessions is None or len(session_id) > 200:
        return None
    principal = await deps.sessions.principal(session_id)
    if principal is None:
        return None
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER) or getattr(request.state, "csrf", None)
        if not csrf_matches(session_id, sent):
            raise HTTPException(403, "a write made with a console session needs its CSRF token")
    principal = dataclasses.replace(principal, client=_client(request))
    request.state.principal = principal
    return principal


def _refuse_cross_site(request: Request, deps: Deps) -> None:
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is not None:
        own = {f"{scheme}://{request.headers.get('host', '')}" for scheme in ("http", "https")}
        if origin not in own and origin not in deps.allowed_origins:
            raise HTTPException(403, f"cross-origin request refused (Origin {origin[:100]!r})")
    elif request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "cross-site request refused")
    if _has_body(request):
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        allowed = JSON_TYPES | (NDJSON_TYPES if route_path(request) == f"{P}/events" else frozenset())
        if media not in allowed:
            kinds = ' or '.join(sorted(allowed))
            raise HTTPException(415, f"the body must be {kinds}, not {media or 'untyped'}")


def route_path(request: Request) -> str:
    """The route's path template, prefix included (FastAPI versions differ on which route object
    the scope holds: the router's own or the app's prefixed copy)."""
    path = getattr(request.scope.get("route"), "path", "")
    return path if path.startswith(P) else P + path


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return bool(request.headers.get("transfer-encoding")) or (length is not None and length != "0")


async def authorize(request: Request, deps: Deps, credentials: Credentials) -> Principal:
    """The dependency of every /api/v1 route: who is asking, and may they."""
    _refuse_cross_site(request, deps)
    needed = PERMISSIONS.get((request.method, route_path(request)))
    principal = await identify(request, deps, credentials)
    if principal is None:
        raise _unauthorized("a token is required (Authorization: Bearer <token>)")
    if needed is None:
        raise HTTPException(403, "this route is not open to any role")
    if not principal.may(needed):
        raise HTTPException(403, f"role {principal.role} may not {needed.value.replace('_', ' ')} "
                                 f"(token {principal.name!r})")
    return principal


Who = Annotated[Principal, Depends(authorize)]
