"""What crosses Temporal's wire: workflows, executions and step runs as JSON-ready dicts."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from typing import Any

import orjson

from engine.approvals import Approval, ApprovalStatus
from engine.rules.model import Workflow
from engine.store import Execution, StepRun
from steps import REGISTRY


def dump_workflow(workflow: Workflow) -> dict[str, Any]:
    """The definition as the run's input: everything needed to run it again, exactly."""
    data: dict[str, Any] = workflow.model_dump(mode="json", by_alias=True)
    return data


def workflow_key(data: dict[str, Any]) -> str:
    """A digest of a dumped definition: activities cache parsed definitions by it."""
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def load_workflow(data: dict[str, Any]) -> Workflow:
    """The definition back, with each step's config parsed as when rules load."""
    workflow = Workflow.model_validate(data)
    for step in workflow.steps:
        step._parsed = REGISTRY[step.type].Config.model_validate(step.config)
    return workflow


_CACHE: OrderedDict[str, Workflow] = OrderedDict()
CACHE_SIZE = 256


def cached_workflow(data: dict[str, Any], key: str | None = None) -> Workflow:
    """:func:`load_workflow`, parsed once per definition (by its key) in a process."""
    key = key or workflow_key(data)
    found = _CACHE.get(key)
    if found is None:
        found = _CACHE[key] = load_workflow(data)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return found


def run_to_dict(run: StepRun) -> dict[str, Any]:
    return dataclasses.asdict(run)


def run_from_dict(data: dict[str, Any]) -> StepRun:
    return StepRun(**data)


def execution_to_dict(execution: Execution, *, with_runs: bool = True) -> dict[str, Any]:
    data = {f.name: getattr(execution, f.name) for f in dataclasses.fields(execution) if f.name != "runs"}
    data["runs"] = [run_to_dict(r) for r in execution.runs] if with_runs else []
    return data


def execution_from_dict(data: dict[str, Any]) -> Execution:
    values = dict(data)
    runs = [run_from_dict(r) for r in values.pop("runs", [])]
    return Execution(**values, runs=runs)


def approval_to_dict(approval: Approval) -> dict[str, Any]:
    data = dataclasses.asdict(approval)
    data["approvers"] = sorted(approval.approvers)
    data["plan"], data["target"] = dict(approval.plan), dict(approval.target)
    data["status"] = str(approval.status)
    return data


def approval_from_dict(data: dict[str, Any]) -> Approval:
    values = dict(data)
    values["approvers"] = frozenset(values.get("approvers") or ())
    values["status"] = ApprovalStatus(values.get("status") or ApprovalStatus.PENDING)
    return Approval(**values)
