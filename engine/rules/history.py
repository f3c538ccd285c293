"""A version of a rule as a person reads it: its spec as YAML, in the order a rule file
writes it, and the unified diff between two versions (``GET .../versions/{n}/diff``).

The database keeps a spec as JSON, whose object keys come back in its own order; here the
keys are put back in the models' order (``id``, ``name``, ... ``steps``; a step's ``id``,
``type``, ``config``, ...), the others after them in alphabetical order, so the same spec is
always the same text and a diff shows only what changed.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from engine.rules.model import Experiment, StepSpec, Strategy, Workflow

_ORDER: dict[str, list[str]] = {
    "workflow": list(Workflow.model_fields),
    "strategy": list(Strategy.model_fields),
    "step": list(StepSpec.model_fields),
    "experiment": list(Experiment.model_fields),
}


def _ordered(value: dict[str, Any], order: list[str]) -> dict[str, Any]:
    known = [k for k in order if k in value]
    return {k: value[k] for k in known + sorted(k for k in value if k not in order)}


def canonical(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with its keys in rule-file order (``kind``: workflow or strategy)."""
    out = _ordered(spec, _ORDER[kind])
    if kind == "workflow" and isinstance(out.get("steps"), list):
        out["steps"] = [_ordered(s, _ORDER["step"]) if isinstance(s, dict) else s for s in out["steps"]]
    if kind == "strategy" and isinstance(out.get("experiment"), dict):
        out["experiment"] = _ordered(out["experiment"], _ORDER["experiment"])
    return out


def to_yaml(kind: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(canonical(kind, spec), allow_unicode=True, sort_keys=False, width=100)


def unified_diff(kind: str, rule_id: str, old: tuple[int, dict[str, Any]] | None,
                 new: tuple[int, dict[str, Any]]) -> str:
    """The unified diff of version ``old`` (None: nothing before it) to ``new``, each a
    (version, spec); empty when their YAML is the same."""
    before = to_yaml(kind, old[1]).splitlines(keepends=True) if old is not None else []
    after = to_yaml(kind, new[1]).splitlines(keepends=True)
    label = f"{kind}/{rule_id}"
    return "".join(difflib.unified_diff(
        before, after, fromfile=f"{label}@{old[0]}" if old is not None else "/dev/null",
        tofile=f"{label}@{new[0]}"))
