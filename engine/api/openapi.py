"""The OpenAPI document: tags, and the rule-file formats as components, so the request
bodies of workflow and strategy writes are described by the very models that validate them.
Every operation that takes parameters documents the 400 that :mod:`engine.api.edge` gives
for a parameter that is not UTF-8 or holds NUL."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from engine.api.edge import BAD_PARAMETER
from engine.api.models import ExecuteRequest
from engine.rules.model import Strategy, Workflow

NO_NUL = "^[^\\u0000]*$"
TAGS = [
    {"name": "workflows",
     "description": "Workflows stored through the API (rule-file workflows are read-only here)."},
    {"name": "strategies",
     "description": "Strategies stored through the API (rule-file strategies are read-only here)."},
    {"name": "executions", "description": "Workflow executions: manual triggers, history, cancellation."},
    {"name": "incidents", "description": "Incidents formed from bursts of strategy hits."},
    {"name": "events", "description": "Event intake over HTTP (the same intake as NATS)."},
    {"name": "rules", "description": "The active rule generation and hot reload."},
    {"name": "experiments", "description": "Strategies that split incidents between workflow arms: "
                                           "per-arm outcomes."},
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
        # The rule-file formats and the execute request, for bodies the routes read themselves.
        for model in (Workflow, Strategy, ExecuteRequest):
            spec = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
            for name, definition in spec.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components[model.__name__] = spec
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if operation.get("parameters"):
                    _bad_parameters(operation)
                    for parameter in operation["parameters"]:
                        _no_nul(parameter.get("schema", {}))
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _no_nul(schema: dict[str, Any]) -> None:
    """A text parameter holds no NUL character (engine.api.edge refuses it)."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string" and "pattern" not in option and "format" not in option \
                and "enum" not in option:
            option["pattern"] = NO_NUL


def _bad_parameters(operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    known = responses.get("400")
    if known is None:
        responses["400"] = {"description": BAD_PARAMETER, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Message"}}}}
    else:
        known["description"] = f"{known['description']}; or: {BAD_PARAMETER[0].lower()}{BAD_PARAMETER[1:]}"
