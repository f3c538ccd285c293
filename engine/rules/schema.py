"""JSON Schema of rule files (``aetherius schema``), for editors that validate as one types.

A document is a workflow, a strategy, or a bundle of both. Each step's ``config`` is
checked against its type's schema through ``if``/``then`` on the step's ``type``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from engine.rules.model import Strategy, Workflow
from steps import REGISTRY


def _inline(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(schema.pop("$defs", {}))
    return schema


def rule_file_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    workflow = _inline(Workflow, defs)
    strategy = _inline(Strategy, defs)
    step_rules = []
    for name, step_type in sorted(REGISTRY.items()):
        config = _inline(step_type.Config, defs)
        defs[f"{name}_config"] = config
        step_rules.append({
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"properties": {"config": {"$ref": f"#/$defs/{name}_config"}}},
        })
    step = defs.get("StepSpec", {})
    step.setdefault("allOf", []).extend(step_rules)
    step["properties"]["type"] = {"enum": sorted(REGISTRY), "title": "Type"}
    defs["Workflow"] = workflow
    defs["Strategy"] = strategy
    bundle = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "strategies": {"type": "array", "items": {"$ref": "#/$defs/Strategy"}},
            "workflows": {"type": "array", "items": {"$ref": "#/$defs/Workflow"}},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Aetherius rule file",
        "description": "A workflow (has steps), a strategy (has symptoms), or a bundle of both.",
        "oneOf": [
            {"$ref": "#/$defs/Workflow"},
            {"$ref": "#/$defs/Strategy"},
            bundle,
        ],
        "$defs": defs,
    }
