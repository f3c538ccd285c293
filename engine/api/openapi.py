"""The OpenAPI document: tags, and the rule-file formats as components, so the request
bodies of workflow and strategy writes are described by the very models that validate them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from engine.rules.model import Strategy, Workflow

TAGS = [
    {"name": "workflows",
     "description": "Workflows stored through the API (rule-file workflows are read-only here)."},
    {"name": "strategies",
     "description": "Strategies stored through the API (rule-file strategies are read-only here)."},
    {"name": "executions", "description": "Workflow executions: manual triggers, history, cancellation."},
    {"name": "incidents", "description": "Incidents formed from bursts of strategy hits."},
    {"name": "events", "description": "Event intake over HTTP (the same intake as NATS)."},
    {"name": "rules", "description": "The active rule generation and hot reload."},
    {"name": "operations", "description": "Metrics and probes."},
]


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` add the rule-file formats to the generated document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes, tags=TAGS)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (Workflow, Strategy):   # the rule-file formats, for the request bodies
            spec = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
            for name, definition in spec.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = spec
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
