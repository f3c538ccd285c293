"""The web console: server-rendered pages under ``/ui/`` over the same parts as the API.

``install(app)`` adds it to the API's app (the service does, in ``Service._build``). Every
page is plain HTML that reads without JavaScript; the vendored htmx (``static/htmx.min.js``,
0BSD, its licence beside it) only refreshes the incident list while "live" is on and checks
a rule draft as it is typed. Nothing is loaded from another origin (the pages' CSP says so).

::

    access.py    who may see and do what: the console's route table, read against the API's
    login.py     /ui/login, /ui/logout: an API token in, a session cookie out
    pages.py     /ui/incidents, /ui/incidents/{id}, /ui/executions/{id}, /ui/workflows/{id},
                 /ui/approvals (+ approve, deny), /ui/audit, /ui/experiments (per-arm outcomes)
    rules.py     /ui/rules, /ui/rules/{kind}/{id}, /ui/editor/{kind} (+ check, save)
    graph.py     a workflow as SVG, laid out here
    timeline.py  one incident's story in time order
    render.py    Jinja2 templates (autoescaped) and the headers every page carries

Jinja2 is the templating: autoescaping by default, compiled templates (the incident list of
100 rows renders in a few milliseconds), and it is what FastAPI itself documents.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from engine.ui import login, pages, rules
from engine.ui.access import UI_STATIC, ConsoleError


async def _console_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConsoleError)
    return login.error_page(request, exc)


def install(app: FastAPI) -> FastAPI:
    """Add the console's routes (kept out of the OpenAPI document) and its static files."""
    for router in (login.router, pages.router, rules.router):
        app.include_router(router)
    static = resources.files("engine.ui") / "static"
    app.mount(UI_STATIC, StaticFiles(directory=str(static)), name="ui-static")
    app.add_exception_handler(ConsoleError, _console_error)
    return app


__all__ = ["install"]
