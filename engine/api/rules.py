"""Workflows and strategies stored through the API: one implementation of list, get,
create, replace and delete serves both kinds (a :class:`Kind` says what differs).

A document is validated exactly as a rule file is, by the same loader and whole-set checks,
against the active rules so references resolve. A refusal is a 422 whose ``detail`` lists
every problem with its ``loc`` inside the posted document and its ``msg``, both taken from
the :class:`~engine.exceptions.Problem` as the loader made it; a problem the document causes
in another rule is a ``rule_conflict``. Rules from rule files (``source = 'file'``) are
edited under ``rules/``, never here: 409. After every write the rules are reloaded on this
replica at once; the outcome is in the ``reload`` field and the ``X-Aetherius-Rules-Reload``
header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from engine.api.auth import Who
from engine.api.body import json_body
from engine.api.deps import QueriesDep, Rules, RulesDep
from engine.api.models import (
    BAD_JSON,
    CONFLICT,
    INVALID,
    NOT_FOUND,
    PREFIX,
    UNAVAILABLE,
    ReloadResult,
    Responses,
    StrategyList,
    StrategyRecord,
    WorkflowList,
    WorkflowRecord,
)
from engine.auth import Principal
from engine.payloads import shown
from engine.policy import Policy
from engine.rules.check import validate
from engine.rules.generation import Generation
from engine.rules.loader import Origin, RuleSet, add_strategy, add_workflow
from engine.rules.model import Strategy, Workflow
from engine.rules.yamlsource import LineMap
from engine.storage.queries import Queries
from engine.storage.rules import strategy_spec

log = logging.getLogger(__name__)

RELOAD_HEADER = "X-Aetherius-Rules-Reload"
API_ORIGIN = "<request body>"   # the path of a posted document's problems

Row = dict[str, Any]


# ----------------------------------------------------------------------------- the two kinds


@dataclass(frozen=True)
class Kind:
    """What differs between workflows and strategies, for the handlers that serve both."""

    name: str                                                    # "workflow"
    plural: str                                                  # "workflows", as in the paths
    add: Callable[[RuleSet, Any, Origin], None]                  # the loader's add_workflow, ...
    of: Callable[[RuleSet | Generation], dict[str, Any]]         # the rules of this kind in a set
    get: Callable[[Queries, str], Awaitable[Row | None]]
    insert: Callable[[Queries, str, Row, Principal], Awaitable[Row | None]]   # audited as the principal's
    update: Callable[[Queries, str, Row, Principal], Awaitable[Row | None]]
    delete: Callable[[Queries, str, Principal], Awaitable[bool]]
    values: Callable[[Any, Any], Row]                            # (document, its spec) -> columns
    summary: Callable[[Row, Generation | None], Row]             # a row as listed
    definition: Callable[[Row], Row]                             # its spec, as in a rule file


def _workflow_values(raw: dict[str, Any], wf: Workflow) -> Row:
    spec = {k: v for k, v in raw.items() if k != "version"}   # the database owns versions
    timeout = raw.get("timeout")
    return {"name": wf.name, "description": wf.description, "trigger_type": wf.trigger_type,
            "trigger_config": raw.get("trigger_config") or {}, "status": wf.status,
            "priority": wf.priority, "timeout": timeout if isinstance(timeout, str) else f"{wf.timeout:g}s",
            "steps": raw["steps"], "definition": spec}


def _workflow_summary(row: Row, gen: Generation | None) -> Row:
    active = gen.workflows.get(row["id"]) if gen is not None else None
    return {**row, "active": active is not None, "active_version": active.version if active else None}


def _workflow_definition(row: Row) -> Row:
    if row.get("definition"):
        return dict(row["definition"])
    return {k: row[k] for k in ("id", "name", "description", "trigger_type", "trigger_config", "status",
                                "priority", "timeout", "steps") if row.get(k) not in (None, "")}


def _strategy_values(raw: dict[str, Any], strategy: Strategy) -> Row:
    return {"name": strategy.name, "category": strategy.category, "symptoms": raw["symptoms"],
            "workflow_id": strategy.workflow_id, "priority": strategy.priority,
            "enabled": strategy.enabled, "definition": dict(raw)}


def _strategy_summary(row: Row, gen: Generation | None) -> Row:
    return {**row, "active": gen is not None and row["id"] in gen.strategies}


WORKFLOW = Kind("workflow", "workflows", add_workflow, lambda rules: rules.workflows, Queries.get_workflow,
                Queries.insert_workflow, Queries.update_workflow, Queries.delete_workflow, _workflow_values,
                _workflow_summary, _workflow_definition)
STRATEGY = Kind("strategy", "strategies", add_strategy, lambda rules: rules.strategies, Queries.get_strategy,
                Queries.insert_strategy, Queries.update_strategy, Queries.delete_strategy, _strategy_values,
                _strategy_summary, strategy_spec)


def _record(kind: Kind, row: Row, rules: Rules, reloaded: ReloadResult | None = None) -> Row:
    return {**kind.summary(row, rules.generation), "definition": kind.definition(row), "reload": reloaded}


# ----------------------------------------------------------------------------- validation


def _implicit(strategy: Strategy) -> bool:
    return strategy.category == "workflow_trigger" and strategy.id == f"workflow:{strategy.workflow_id}"


async def _active_rules(q: Queries, gen: Generation | None, drop: tuple[str, str] | None = None) -> RuleSet:
    """The active workflows and strategies (stored disabled strategies too), minus ``drop``
    (kind, id): what a document is checked against."""
    ruleset = RuleSet()
    if gen is not None:
        for wf_id, wf in gen.workflows.items():
            if drop != ("workflow", wf_id):
                ruleset.workflows[wf_id] = wf
                ruleset.origins[("workflow", wf_id)] = Origin(f"workflow {wf_id}", LineMap())
        for sid, strategy in gen.strategies.items():
            if drop != ("strategy", sid) and not _implicit(strategy):
                ruleset.strategies[sid] = strategy
                ruleset.origins[("strategy", sid)] = Origin(f"strategy {sid}", LineMap())
    skip = [*ruleset.strategies, *([drop[1]] if drop and drop[0] == "strategy" else [])]
    for row in await q.strategies_except(skip):
        add_strategy(ruleset, strategy_spec(row), Origin(f"strategy {row['id']}", LineMap()))
    return ruleset


def _clip(message: str, limit: int = 300) -> str:
    """A loader message may quote the document (an unknown key, a bad value): only so much of it."""
    return message if len(message) <= limit else f"{message[:limit - 3]}..."


def _loc(loc: tuple[str | int, ...]) -> list[str | int]:
    return [part if isinstance(part, int) or len(part) <= 64 else shown(part) for part in loc]


async def _check(kind: Kind, raw: Any, q: Queries, gen: Generation | None,
                 drop: tuple[str, str] | None, policy: Policy) -> tuple[Any, list[Row]]:
    """Validate one document as a rule file would be, among the active rules.
    Returns (its spec, []) or (None, the 422 detail items)."""
    ruleset = await _active_rules(q, gen, drop)
    baseline = {str(p) for p in validate(ruleset, policy)}   # problems that were there before
    ruleset.problems = []
    kind.add(ruleset, raw, Origin(API_ORIGIN, None))
    errors: list[Row] = []
    for problem in validate(ruleset, policy):
        if problem.path == API_ORIGIN:
            errors.append({"loc": _loc(problem.loc), "msg": _clip(problem.msg), "type": "rule_error"})
        elif str(problem) not in baseline:
            errors.append({"loc": [], "msg": _clip(f"{problem.path}: {problem.message}"),
                           "type": "rule_conflict"})
    if errors:
        return None, errors
    return kind.of(ruleset)[raw["id"]], []


async def _broken_by_delete(kind: Kind, ident: str, q: Queries, gen: Generation | None,
                            policy: Policy) -> list[str]:
    """What deleting a rule would break (strategies naming a workflow, inhibitions)."""
    before = {str(p) for p in validate(await _active_rules(q, gen), policy)}
    after = await _active_rules(q, gen, (kind.name, ident))
    return [f"{p.path}: {p.message}" for p in validate(after, policy) if str(p) not in before]


# ----------------------------------------------------------------------------- writes


async def _reload(rules: Rules, response: Response) -> ReloadResult:
    try:
        ok = await rules.reload("api")
    except Exception as exc:   # the write is done; say that the reload did not happen (the log says why)
        log.exception("rule reload after an API write failed")
        result = ReloadResult(ok=False, generation=rules.status.generation,
                              problems=[f"reload failed: {type(exc).__name__} (see the service log)"])
    else:
        status = rules.status
        result = ReloadResult(ok=ok, generation=status.generation, problems=[str(p) for p in status.problems])
    response.headers[RELOAD_HEADER] = (
        f"{'ok' if result.ok else 'invalid'}; generation={result.generation}"
        + ("" if result.ok else f"; problems={len(result.problems)}"))
    return result


def _file_conflict(kind: Kind, ident: str, rules: Rules) -> HTTPException:
    return HTTPException(409, f"{kind.name} {shown(ident)} is defined in a rule file (source 'file'): "
                              f"edit it under {rules.directory}")


def _unprocessable(errors: list[Row]) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": errors})


async def _get(kind: Kind, ident: str, q: Queries, rules: Rules) -> Row:
    row = await kind.get(q, ident)
    if row is None:
        raise HTTPException(404, f"no {kind.name} {shown(ident)}")
    return _record(kind, row, rules)


async def _create(kind: Kind, request: Request, response: Response, q: Queries, rules: Rules,
                  who: Principal) -> Any:
    raw = await json_body(request)
    ident = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(ident, str):
        existing = await kind.get(q, ident)
        gen = rules.generation
        if (existing is not None and existing["source"] == "file") or (
                existing is None and gen is not None and ident in kind.of(gen)):
            raise _file_conflict(kind, ident, rules)
        if existing is not None:
            raise HTTPException(409, f"{kind.name} {shown(ident)} exists (source {existing['source']!r}): "
                                     f"PUT {PREFIX}/{kind.plural}/{ident} replaces it")
    spec, errors = await _check(kind, raw, q, rules.generation, None, rules.policy)
    if errors:
        return _unprocessable(errors)
    row = await kind.insert(q, spec.id, kind.values(raw, spec), who)
    if row is None:
        raise HTTPException(409, f"{kind.name} {shown(spec.id)} was created meanwhile")
    reloaded = await _reload(rules, response)
    return _record(kind, row, rules, reloaded)


async def _replace(kind: Kind, ident: str, request: Request, response: Response, q: Queries,
                   rules: Rules, who: Principal) -> Any:
    raw = await json_body(request)
    if isinstance(raw, dict):
        raw.setdefault("id", ident)   # a PUT body may leave the id to the path
    existing = await kind.get(q, ident)
    if existing is None:
        raise HTTPException(404, f"no {kind.name} {shown(ident)} (POST {PREFIX}/{kind.plural} creates one)")
    if existing["source"] == "file":
        raise _file_conflict(kind, ident, rules)
    if isinstance(raw, dict) and raw.get("id") != ident:
        return _unprocessable([{"loc": ["id"], "type": "rule_error",
                                "msg": f"the body's id {shown(raw.get('id'))} is not the path's "
                                       f"{shown(ident)}"}])
    spec, errors = await _check(kind, raw, q, rules.generation, (kind.name, ident), rules.policy)
    if errors:
        return _unprocessable(errors)
    row = await kind.update(q, ident, kind.values(raw, spec), who)
    if row is None:
        raise HTTPException(409, f"{kind.name} {shown(ident)} was deleted or taken over by a rule file "
                                 "meanwhile")
    reloaded = await _reload(rules, response)
    return _record(kind, row, rules, reloaded)


async def _delete(kind: Kind, ident: str, q: Queries, rules: Rules, who: Principal) -> Response:
    existing = await kind.get(q, ident)
    if existing is None:
        raise HTTPException(404, f"no {kind.name} {shown(ident)}")
    if existing["source"] == "file":
        raise _file_conflict(kind, ident, rules)
    broken = await _broken_by_delete(kind, ident, q, rules.generation, rules.policy)
    if broken:
        raise HTTPException(409, f"deleting {kind.name} {shown(ident)} would break: {'; '.join(broken)}")
    if not await kind.delete(q, ident, who):
        raise HTTPException(404, f"no {kind.name} {shown(ident)}")
    response = Response(status_code=204)
    await _reload(rules, response)
    return response


# ----------------------------------------------------------------------------- routes

router = APIRouter()

Source = Literal["file", "api", "sql"]
DELETED: Responses = {204: {"description": f"Deleted; the reload's outcome is in the {RELOAD_HEADER} header"}}


def _spec_body(name: str, description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}}


@router.get("/workflows", response_model=WorkflowList, tags=["workflows"], responses=UNAVAILABLE,
            summary="List workflows")
async def list_workflows(
        q: QueriesDep, rules: RulesDep,
        status: Annotated[str | None, Query(description="active, inactive, draft, disabled")] = None,
        source: Source | None = None) -> dict[str, Any]:
    gen = rules.generation
    return {"items": [WORKFLOW.summary(row, gen) for row in await q.list_workflows(status, source)]}


@router.get("/workflows/{workflow_id}", response_model=WorkflowRecord, tags=["workflows"],
            responses={**NOT_FOUND, **UNAVAILABLE}, summary="One workflow: its definition and version")
async def get_workflow(workflow_id: str, q: QueriesDep, rules: RulesDep) -> Row:
    return await _get(WORKFLOW, workflow_id, q, rules)


@router.post("/workflows", status_code=201, response_model=WorkflowRecord, tags=["workflows"],
             responses={**BAD_JSON, **CONFLICT, **INVALID, **UNAVAILABLE}, summary="Create a workflow",
             openapi_extra=_spec_body("Workflow", "A workflow exactly as in a rule file, as JSON"))
async def create_workflow(request: Request, response: Response, q: QueriesDep, rules: RulesDep,
                          who: Who) -> Any:
    return await _create(WORKFLOW, request, response, q, rules, who)


@router.put("/workflows/{workflow_id}", response_model=WorkflowRecord, tags=["workflows"],
            responses={**BAD_JSON, **NOT_FOUND, **CONFLICT, **INVALID, **UNAVAILABLE},
            summary="Replace a workflow (its version is bumped)",
            openapi_extra=_spec_body("Workflow", "The whole workflow; 'id' may be omitted"))
async def replace_workflow(workflow_id: str, request: Request, response: Response, q: QueriesDep,
                           rules: RulesDep, who: Who) -> Any:
    return await _replace(WORKFLOW, workflow_id, request, response, q, rules, who)


@router.delete("/workflows/{workflow_id}", status_code=204, tags=["workflows"], response_class=Response,
               responses={**DELETED, **NOT_FOUND, **CONFLICT, **UNAVAILABLE}, summary="Delete a workflow")
async def delete_workflow(workflow_id: str, q: QueriesDep, rules: RulesDep, who: Who) -> Response:
    return await _delete(WORKFLOW, workflow_id, q, rules, who)


@router.get("/strategies", response_model=StrategyList, tags=["strategies"], responses=UNAVAILABLE,
            summary="List strategies")
async def list_strategies(q: QueriesDep, rules: RulesDep, enabled: bool | None = None,
                          source: Source | None = None) -> dict[str, Any]:
    gen = rules.generation
    return {"items": [STRATEGY.summary(row, gen) for row in await q.list_strategies(enabled, source)]}


@router.get("/strategies/{strategy_id}", response_model=StrategyRecord, tags=["strategies"],
            responses={**NOT_FOUND, **UNAVAILABLE}, summary="One strategy: its definition and version")
async def get_strategy(strategy_id: str, q: QueriesDep, rules: RulesDep) -> Row:
    return await _get(STRATEGY, strategy_id, q, rules)


@router.post("/strategies", status_code=201, response_model=StrategyRecord, tags=["strategies"],
             responses={**BAD_JSON, **CONFLICT, **INVALID, **UNAVAILABLE}, summary="Create a strategy",
             openapi_extra=_spec_body("Strategy", "A strategy exactly as in a rule file, as JSON"))
async def create_strategy(request: Request, response: Response, q: QueriesDep, rules: RulesDep,
                          who: Who) -> Any:
    return await _create(STRATEGY, request, response, q, rules, who)


@router.put("/strategies/{strategy_id}", response_model=StrategyRecord, tags=["strategies"],
            responses={**BAD_JSON, **NOT_FOUND, **CONFLICT, **INVALID, **UNAVAILABLE},
            summary="Replace a strategy (its version is bumped)",
            openapi_extra=_spec_body("Strategy", "The whole strategy; 'id' may be omitted"))
async def replace_strategy(strategy_id: str, request: Request, response: Response, q: QueriesDep,
                           rules: RulesDep, who: Who) -> Any:
    return await _replace(STRATEGY, strategy_id, request, response, q, rules, who)


@router.delete("/strategies/{strategy_id}", status_code=204, tags=["strategies"], response_class=Response,
               responses={**DELETED, **NOT_FOUND, **CONFLICT, **UNAVAILABLE}, summary="Delete a strategy")
async def delete_strategy(strategy_id: str, q: QueriesDep, rules: RulesDep, who: Who) -> Response:
    return await _delete(STRATEGY, strategy_id, q, rules, who)
