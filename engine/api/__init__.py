"""The HTTP API of the service: ``create_app(deps)``, served by ``Service._api_loop``.

Everything is under ``/api/v1`` except the operational endpoints ``/metrics``,
``/healthz`` and ``/readyz``. OpenAPI is at ``/openapi.json`` (``/docs`` renders it).

One router per resource, each given only the parts it needs (:mod:`engine.api.deps`)::

    rules.py         /workflows, /strategies   stored rules: one create/replace/delete for both
    executions.py    /workflows/{id}/execute, /executions
    incidents.py     /incidents
    events.py        /events                   HTTP intake (JSON or NDJSON)
    rules_status.py  /rules/status, /rules/reload
    admin.py         /tokens, /audit           the admin role only
    approvals.py     /approvals                pending changes; approve, deny; Slack's signed buttons
    auth.py          who may call what: one table of route -> permission
    operations.py    /metrics, /healthz, /readyz
    models.py, body.py, openapi.py             shapes, bounded bodies, the OpenAPI document
    edge.py                                    clean parameters, errors that show little of the input

``create_app`` only assembles them; it touches nothing but the ``ApiDeps`` it is given, and
only when a request needs it. The API never imports the service, which builds the deps
(``Service.api_deps``).
"""

from __future__ import annotations

import asyncio

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError

from engine import __version__
from engine.api import (
    admin,
    approvals,
    edge,
    events,
    executions,
    incidents,
    openapi,
    operations,
    rules,
    rules_status,
)
from engine.api.auth import AUTH_RESPONSES, authorize
from engine.api.deps import ApiDeps
from engine.api.models import PREFIX
from engine.api.rules import RELOAD_HEADER


def create_app(deps: ApiDeps) -> FastAPI:
    """The service's HTTP API over ``deps`` (see the module docstring)."""
    app = FastAPI(
        title="Aetherius Orchestrator",
        version=__version__,
        description="Kubernetes event storms in, one incident each, diagnosis and repair workflows out.",
        openapi_tags=openapi.TAGS,
    )
    app.state.deps = deps
    app.state.event_slots = asyncio.Semaphore(deps.concurrent_event_requests)   # see events.py
    for router in (rules.router, executions.router, incidents.router, events.router, rules_status.router,
                   admin.router, approvals.router):
        # Every /api/v1 route: a token whose role has the route's permission (engine.api.auth).
        app.include_router(router, prefix=PREFIX, dependencies=[Depends(authorize)], responses=AUTH_RESPONSES)
    # Slack's buttons carry Slack's signature, not a token (engine.api.auth.SIGNED).
    app.include_router(approvals.slack_router, prefix=PREFIX)
    app.include_router(operations.router)
    app.add_middleware(edge.CleanParameters)
    app.add_exception_handler(RequestValidationError, edge.validation_failed)
    app.add_exception_handler(405, edge.method_not_allowed)
    app.add_exception_handler(Exception, edge.internal_error)
    openapi.install(app)
    return app


__all__ = ["PREFIX", "RELOAD_HEADER", "ApiDeps", "create_app"]
