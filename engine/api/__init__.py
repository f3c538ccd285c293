"""The HTTP API of the service: ``create_app(service)``, served by ``Service._api_loop``.

Everything is under ``/api/v1`` except the operational endpoints ``/metrics``,
``/healthz`` and ``/readyz``. OpenAPI is at ``/openapi.json`` (``/docs`` renders it).

Workflows and strategies written here are validated exactly as rule files are: the same
loader (:mod:`engine.rules.loader`) and whole-set checks (:mod:`engine.rules.check`), against the active
rules so references resolve. A refusal is a 422 whose ``detail`` lists every problem with
its ``loc`` inside the posted document, e.g. ``["steps", 3, "config", "action"]``. Rules
defined in rule files (``source = 'file'``) are edited under ``rules/``, never here: 409.
After every write the rules are reloaded on this replica at once (the others hear of it
through NOTIFY); the reload's outcome is in the ``reload`` field and in the
``X-Aetherius-Rules-Reload`` header.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, FastAPI, HTTPException, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from engine import __version__
from engine.correlation import event_context, incident_from_event
from engine.events import parse_event
from engine.exceptions import MalformedEvent, Problem
from engine.rules.check import validate
from engine.rules.loader import Origin, RuleSet, add_strategy, add_workflow
from engine.rules.model import Strategy, Workflow
from engine.rules.yamlsource import LineMap
from engine.storage.queries import BadCursor, Page, Queries
from engine.storage.rules import strategy_spec
from engine.store import FINAL_EXECUTION

if TYPE_CHECKING:
    from engine.service import Service

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
RELOAD_HEADER = "X-Aetherius-Rules-Reload"
MAX_RULE_BODY = 1024 * 1024
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})
API_ORIGIN = "<request body>"

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

CURSOR = "next_cursor of the previous page (offset is then ignored)"
ExecutionStatus = Literal["running", "succeeded", "failed", "cancelled", "timed_out"]


# ----------------------------------------------------------------------------- models


class Message(BaseModel):
    detail: str = Field(description="what went wrong")


class RuleErrorItem(BaseModel):
    loc: list[str | int] = Field(description="path of the offending field inside the posted document "
                                             "(empty: the document as a whole, or another rule)")
    msg: str
    type: str = Field(description="rule_error: this document; rule_conflict: it breaks another rule")


class RuleErrors(BaseModel):
    detail: list[RuleErrorItem]


class ReloadResult(BaseModel):
    ok: bool = Field(description="false: the rules are invalid and the previous generation stays active")
    generation: int = Field(description="the active rule generation after the reload")
    problems: list[str] = Field(default_factory=list, description="path:line: message")


class WorkflowSummary(BaseModel):
    id: str
    name: str
    description: str = ""
    status: str
    trigger_type: str
    priority: int
    version: int = Field(description="bumped by the database on every change")
    source: str = Field(description="file (rules/), api, or sql")
    created_at: datetime
    updated_at: datetime
    active: bool = Field(description="part of the active rule generation on this replica")
    active_version: int | None = Field(description="the version the active generation runs")


class WorkflowRecord(WorkflowSummary):
    trigger_config: dict[str, Any]
    timeout: str | None
    steps: list[Any]
    definition: dict[str, Any] = Field(description="the workflow spec, as in a rule file")
    reload: ReloadResult | None = Field(default=None, description="outcome of the reload after a write")


class WorkflowList(BaseModel):
    items: list[WorkflowSummary]


class StrategySummary(BaseModel):
    id: str
    name: str
    category: str
    workflow_id: str | None
    priority: int
    enabled: bool
    version: int
    source: str
    created_at: datetime
    updated_at: datetime
    active: bool = Field(description="part of the active rule generation on this replica")


class StrategyRecord(StrategySummary):
    symptoms: list[Any]
    definition: dict[str, Any] = Field(description="the strategy spec, as in a rule file")
    reload: ReloadResult | None = Field(default=None, description="outcome of the reload after a write")


class StrategyList(BaseModel):
    items: list[StrategySummary]


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: Any = Field(default=None, description="one event in any shape the intake accepts; the "
                                                 "incident context is built from it")
    incident: dict[str, Any] | None = Field(default=None, description="incident fields (override those "
                                                                       "taken from the event)")
    context: dict[str, Any] | None = Field(default=None, description="extra variables, read as 'context'")


class ExecuteAccepted(BaseModel):
    execution_id: str
    status: str = "running"
    workflow_id: str
    workflow_version: int
    dry_run: bool
    href: str


class ExecutionSummary(BaseModel):
    id: str
    workflow_id: str
    workflow_version: int
    incident_id: str | None
    status: str
    dry_run: bool
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    owner: str | None = Field(description="the replica running it")


class StepRunRecord(BaseModel):
    seq: int
    step_id: str
    step_type: str
    status: str
    attempts: int
    output: Any
    error: str | None
    error_kind: str | None
    parent: int | None = Field(description="seq of the run that scheduled this one")
    in_branch_of: int | None = Field(description="seq of the parallel run this ran inside")
    branch: list[Any] = Field(description="the step ids it scheduled next")
    started_at: datetime | None
    attempt_started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None


class ExecutionDetail(ExecutionSummary):
    context: dict[str, Any] = Field(description="incident, events and vars the execution started with")
    steps: list[StepRunRecord] = Field(description="step runs, ordered by seq")
    running_here: bool = Field(description="running on this replica (so it can be cancelled here)")


class ExecutionPage(BaseModel):
    items: list[ExecutionSummary]
    limit: int
    offset: int
    next_cursor: str | None = Field(description="pass as 'cursor' for the next page; null on the last")


class CancelResult(BaseModel):
    execution_id: str
    status: str = Field(description="'cancelled', or 'cancelling' if it had not stopped yet")


class IncidentSummary(BaseModel):
    id: str
    strategy_id: str
    key: str
    status: str
    severity: str | None
    workflow_id: str | None
    execution_id: str | None
    namespace: str | None
    workload: str | None
    node: str | None
    reason: str | None
    events: int
    late: int
    suppressed: int
    inhibited: dict[str, Any]
    first_seen: datetime | None
    last_seen: datetime | None
    opened_at: datetime
    closed_at: datetime | None
    cooldown_until: datetime | None


class IncidentDetail(IncidentSummary):
    context: dict[str, Any]
    event_states: dict[str, int] = Field(description="recorded events of the incident, counted by state")


class IncidentPage(BaseModel):
    items: list[IncidentSummary]
    limit: int
    offset: int
    next_cursor: str | None


class IngestResult(BaseModel):
    received: int = Field(description="entries in the request")
    accepted: int = Field(description="new events recorded and processed")
    duplicates: int
    dead_letters: int = Field(description="entries that could not be read, recorded as dead letters")
    ignored: int = Field(description="watch lines that carry no event (BOOKMARK, DELETED)")


class BadBody(BaseModel):
    detail: str
    dead_letters: int = 0


class RulesStatus(BaseModel):
    ok: bool
    generation: int
    reason: str
    last_attempt: float
    last_success: float
    reloads: int
    failures: int
    problems: list[str] = Field(description="path:line: message, of the last reload if it failed")
    digest: str | None = Field(description="digest of the active generation")
    strategies: int | None = Field(description="strategies in the active generation (implicit included)")
    workflows: int | None
    files: int | None = Field(description="rule files read")
    loaded_at: float | None
    cached_generation: dict[str, Any] | None = Field(
        description="the generation last published to Redis by any replica (null without Redis)")


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")
    ready: bool
    checks: dict[str, str] = Field(description="postgres, nats, redis")
    reasons: list[str] = Field(description="why it is not ready (empty when ready)")


NOT_FOUND = {404: {"model": Message, "description": "No such id"}}
CONFLICT = {409: {"model": Message, "description": "Conflict (for rules: defined in a rule file)"}}
INVALID = {422: {"model": RuleErrors, "description": "Invalid: every problem, with its location"}}
BAD_JSON = {400: {"model": Message, "description": "The body is not JSON"},
            413: {"model": Message, "description": "The body is too large"}}
UNAVAILABLE = {503: {"model": Message, "description": "The service is not started"}}


def _spec_body(name: str, description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}}


# ----------------------------------------------------------------------------- validation


class _NumberedPaths(LineMap):
    """A line map that numbers every location asked for, so the ``line`` of a
    :class:`Problem` leads back to the exact field path inside a JSON document."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[tuple] = []
        self._numbers: dict[tuple, int] = {}

    def line(self, path: tuple) -> int:
        key = tuple(path)
        number = self._numbers.get(key)
        if number is None:
            self.paths.append(key)
            number = self._numbers[key] = len(self.paths)
        return number

    def path(self, number: int) -> tuple:
        return self.paths[number - 1] if 0 < number <= len(self.paths) else ()


_FIRST_AT_LINE = re.compile(r"\(first at line (\d+)\)")


def _error_item(problem: Problem, lines: _NumberedPaths) -> dict[str, Any]:
    loc = list(lines.path(problem.line))
    msg = problem.message
    for prefix in (".".join(map(str, loc)), "(document)"):
        if prefix and msg.startswith(prefix + ": "):
            msg = msg[len(prefix) + 2:]
            break
    msg = _FIRST_AT_LINE.sub(
        lambda m: f"(first at {'.'.join(map(str, lines.path(int(m.group(1))))) or 'the top'})", msg)
    return {"loc": loc, "msg": msg, "type": "rule_error"}


def _implicit(strategy: Strategy) -> bool:
    return strategy.category == "workflow_trigger" and strategy.id == f"workflow:{strategy.workflow_id}"


# ----------------------------------------------------------------------------- the app


def create_app(service: Service) -> FastAPI:
    """The service's HTTP API (see the module docstring)."""
    app = FastAPI(
        title="Aetherius Orchestrator",
        version=__version__,
        description="Kubernetes event storms in, one incident each, diagnosis and repair workflows out.",
        openapi_tags=TAGS,
    )
    api = APIRouter(prefix=PREFIX)

    def queries() -> Queries:
        if service.pool is None or service.rules is None:
            raise HTTPException(503, "the service is starting")
        return Queries(service.pool)

    # ------------------------------------------------------------------ helpers

    async def read_limited(request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise HTTPException(413, f"the body is {length} bytes; at most {limit} are accepted")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"the body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(request: Request) -> Any:
        raw = await read_limited(request, MAX_RULE_BODY)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"the body is not JSON: {exc}") from None

    async def base_rules(drop: tuple[str, str] | None = None) -> RuleSet:
        """The active workflows and strategies (stored disabled strategies too), minus
        ``drop`` (kind, id): what a document is checked against."""
        rules = RuleSet()
        gen = service.rules.generation if service.rules is not None else None
        if gen is not None:
            for wf_id, wf in gen.workflows.items():
                if drop != ("workflow", wf_id):
                    rules.workflows[wf_id] = wf
                    rules.origins[("workflow", wf_id)] = Origin(f"workflow {wf_id}", LineMap())
            for sid, strategy in gen.strategies.items():
                if drop != ("strategy", sid) and not _implicit(strategy):
                    rules.strategies[sid] = strategy
                    rules.origins[("strategy", sid)] = Origin(f"strategy {sid}", LineMap())
        skip = [*rules.strategies, *([drop[1]] if drop and drop[0] == "strategy" else [])]
        for row in await queries().strategies_except(skip):
            add_strategy(rules, strategy_spec(row), Origin(f"strategy {row['id']}", LineMap()))
        return rules

    async def check(kind: str, raw: Any, drop: tuple[str, str] | None) -> tuple[Any, list[dict[str, Any]]]:
        """Validate one workflow/strategy document as a rule file would be, in the
        context of the active rules. Returns (model, errors)."""
        rules = await base_rules(drop)
        baseline = {str(p) for p in validate(rules)}   # problems that were there before
        rules.problems = []
        lines = _NumberedPaths()
        (add_workflow if kind == "workflow" else add_strategy)(rules, raw, Origin(API_ORIGIN, lines))
        errors = []
        for problem in validate(rules):
            if problem.path == API_ORIGIN:
                errors.append(_error_item(problem, lines))
            elif str(problem) not in baseline:
                errors.append({"loc": [], "msg": f"{problem.path}: {problem.message}",
                               "type": "rule_conflict"})
        if errors:
            return None, errors
        ident = raw["id"]
        return (rules.workflows if kind == "workflow" else rules.strategies)[ident], []

    async def check_delete(kind: str, ident: str) -> list[str]:
        """What deleting a rule would break (strategies naming a workflow, inhibitions)."""
        before = {str(p) for p in validate(await base_rules())}
        after = await base_rules((kind, ident))
        return [f"{p.path}: {p.message}" for p in validate(after) if str(p) not in before]

    async def reload(response: Response) -> ReloadResult:
        assert service.rules is not None
        try:
            ok = await service.reload("api")
        except Exception as exc:   # the write is done; say that the reload did not happen
            log.exception("rule reload after an API write failed")
            status = service.rules.status
            result = ReloadResult(ok=False, generation=status.generation,
                                  problems=[f"reload failed: {type(exc).__name__}: {exc}"])
        else:
            status = service.rules.status
            result = ReloadResult(ok=ok, generation=status.generation,
                                  problems=[str(p) for p in status.problems])
        response.headers[RELOAD_HEADER] = (
            f"{'ok' if result.ok else 'invalid'}; generation={result.generation}"
            + ("" if result.ok else f"; problems={len(result.problems)}"))
        return result

    def with_id(raw: Any, ident: str) -> Any:
        """The path's id into a PUT body (which may omit it)."""
        if isinstance(raw, dict):
            raw.setdefault("id", ident)
        return raw

    def id_mismatch(raw: Any, ident: str) -> JSONResponse | None:
        if isinstance(raw, dict) and raw.get("id") != ident:
            return JSONResponse(status_code=422, content={"detail": [{
                "loc": ["id"], "msg": f"the body's id {raw.get('id')!r} is not the path's {ident!r}",
                "type": "rule_error"}]})
        return None

    def workflow_out(row: dict[str, Any], reloaded: ReloadResult | None = None,
                     full: bool = True) -> dict[str, Any]:
        gen = service.rules.generation if service.rules is not None else None
        active = gen.workflows.get(row["id"]) if gen is not None else None
        out = {**row, "active": active is not None, "active_version": active.version if active else None}
        if full:
            out["definition"] = (dict(row["definition"]) if row.get("definition")
                                 else {k: row[k] for k in ("id", "name", "description", "trigger_type",
                                                           "trigger_config", "status", "priority", "timeout",
                                                           "steps") if row.get(k) not in (None, "")})
            out["reload"] = reloaded
        return out

    def strategy_out(row: dict[str, Any], reloaded: ReloadResult | None = None,
                     full: bool = True) -> dict[str, Any]:
        gen = service.rules.generation if service.rules is not None else None
        out = {**row, "active": gen is not None and row["id"] in gen.strategies}
        if full:
            out["definition"] = strategy_spec(row)
            out["reload"] = reloaded
        return out

    def page_out(page: Page, limit: int, offset: int) -> dict[str, Any]:
        return {"items": page.items, "limit": limit, "offset": offset, "next_cursor": page.next_cursor}

    def file_conflict(kind: str, ident: str) -> HTTPException:
        return HTTPException(409, f"{kind} {ident!r} is defined in a rule file (source 'file'): edit it "
                                  f"under {service.rules.directory if service.rules else 'rules/'}")

    # ------------------------------------------------------------------ workflows and strategies

    def store_for(kind: str) -> dict[str, Any]:
        """The queries and shapes of one kind of rule: the handlers below serve both kinds."""
        q = queries()
        if kind == "workflow":
            return {"plural": "workflows", "get": q.get_workflow, "insert": q.insert_workflow,
                    "update": q.update_workflow, "delete": q.delete_workflow, "values": workflow_values,
                    "out": workflow_out, "active": lambda gen: gen.workflows}
        return {"plural": "strategies", "get": q.get_strategy, "insert": q.insert_strategy,
                "update": q.update_strategy, "delete": q.delete_strategy, "values": strategy_values,
                "out": strategy_out, "active": lambda gen: gen.strategies}

    async def create_rule(kind: str, request: Request, response: Response) -> Any:
        ops = store_for(kind)
        raw = await json_body(request)
        ident = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(ident, str):
            existing = await ops["get"](ident)
            gen = service.rules.generation if service.rules is not None else None
            if (existing is not None and existing["source"] == "file") or (
                    existing is None and gen is not None and ident in ops["active"](gen)):
                raise file_conflict(kind, ident)
            if existing is not None:
                raise HTTPException(409, f"{kind} {ident!r} exists (source {existing['source']!r}): "
                                         f"PUT {PREFIX}/{ops['plural']}/{ident} replaces it")
        spec, errors = await check(kind, raw, None)
        if errors:
            return JSONResponse(status_code=422, content={"detail": errors})
        row = await ops["insert"](spec.id, ops["values"](raw, spec))
        if row is None:
            raise HTTPException(409, f"{kind} {spec.id!r} was created meanwhile")
        return ops["out"](row, await reload(response))

    async def replace_rule(kind: str, ident: str, request: Request, response: Response) -> Any:
        ops = store_for(kind)
        raw = with_id(await json_body(request), ident)
        existing = await ops["get"](ident)
        if existing is None:
            raise HTTPException(404, f"no {kind} {ident!r} (POST {PREFIX}/{ops['plural']} creates one)")
        if existing["source"] == "file":
            raise file_conflict(kind, ident)
        if (mismatch := id_mismatch(raw, ident)) is not None:
            return mismatch
        spec, errors = await check(kind, raw, (kind, ident))
        if errors:
            return JSONResponse(status_code=422, content={"detail": errors})
        row = await ops["update"](ident, ops["values"](raw, spec))
        if row is None:
            raise HTTPException(409, f"{kind} {ident!r} was deleted or taken over by a rule file meanwhile")
        return ops["out"](row, await reload(response))

    async def delete_rule(kind: str, ident: str) -> Response:
        ops = store_for(kind)
        existing = await ops["get"](ident)
        if existing is None:
            raise HTTPException(404, f"no {kind} {ident!r}")
        if existing["source"] == "file":
            raise file_conflict(kind, ident)
        broken = await check_delete(kind, ident)
        if broken:
            raise HTTPException(409, f"deleting {kind} {ident!r} would break: {'; '.join(broken)}")
        if not await ops["delete"](ident):
            raise HTTPException(404, f"no {kind} {ident!r}")
        response = Response(status_code=204)
        await reload(response)
        return response

    # ------------------------------------------------------------------ workflows

    @api.get("/workflows", response_model=WorkflowList, tags=["workflows"], responses=UNAVAILABLE,
             summary="List workflows")
    async def list_workflows(
            status: Annotated[str | None, Query(description="active, inactive, draft, disabled")] = None,
            source: Literal["file", "api", "sql"] | None = None) -> dict[str, Any]:
        rows = await queries().list_workflows(status, source)
        return {"items": [workflow_out(r, full=False) for r in rows]}

    @api.get("/workflows/{workflow_id}", response_model=WorkflowRecord, tags=["workflows"],
             responses={**NOT_FOUND, **UNAVAILABLE}, summary="One workflow: its definition and version")
    async def get_workflow(workflow_id: str) -> dict[str, Any]:
        row = await queries().get_workflow(workflow_id)
        if row is None:
            raise HTTPException(404, f"no workflow {workflow_id!r}")
        return workflow_out(row)

    def workflow_values(raw: dict[str, Any], wf: Workflow) -> dict[str, Any]:
        spec = {k: v for k, v in raw.items() if k != "version"}   # the database owns versions
        timeout = raw.get("timeout")
        return {"name": wf.name, "description": wf.description, "trigger_type": wf.trigger_type,
                "trigger_config": raw.get("trigger_config") or {}, "status": wf.status,
                "priority": wf.priority,
                "timeout": timeout if isinstance(timeout, str) else f"{wf.timeout:g}s",
                "steps": raw["steps"], "definition": spec}

    @api.post("/workflows", status_code=201, response_model=WorkflowRecord, tags=["workflows"],
              responses={**BAD_JSON, **CONFLICT, **INVALID, **UNAVAILABLE}, summary="Create a workflow",
              openapi_extra=_spec_body("Workflow", "A workflow exactly as in a rule file, as JSON"))
    async def create_workflow(request: Request, response: Response) -> Any:
        return await create_rule("workflow", request, response)

    @api.put("/workflows/{workflow_id}", response_model=WorkflowRecord, tags=["workflows"],
             responses={**BAD_JSON, **NOT_FOUND, **CONFLICT, **INVALID, **UNAVAILABLE},
             summary="Replace a workflow (its version is bumped)",
             openapi_extra=_spec_body("Workflow", "The whole workflow; 'id' may be omitted"))
    async def replace_workflow(workflow_id: str, request: Request, response: Response) -> Any:
        return await replace_rule("workflow", workflow_id, request, response)

    @api.delete("/workflows/{workflow_id}", status_code=204, tags=["workflows"], response_class=Response,
                responses={204: {"description": "Deleted; the reload's outcome is in the "
                                                f"{RELOAD_HEADER} header"},
                           **NOT_FOUND, **CONFLICT, **UNAVAILABLE}, summary="Delete a workflow")
    async def delete_workflow(workflow_id: str) -> Response:
        return await delete_rule("workflow", workflow_id)

    # ------------------------------------------------------------------ strategies

    @api.get("/strategies", response_model=StrategyList, tags=["strategies"], responses=UNAVAILABLE,
             summary="List strategies")
    async def list_strategies(enabled: bool | None = None,
                              source: Literal["file", "api", "sql"] | None = None) -> dict[str, Any]:
        rows = await queries().list_strategies(enabled, source)
        return {"items": [strategy_out(r, full=False) for r in rows]}

    @api.get("/strategies/{strategy_id}", response_model=StrategyRecord, tags=["strategies"],
             responses={**NOT_FOUND, **UNAVAILABLE}, summary="One strategy: its definition and version")
    async def get_strategy(strategy_id: str) -> dict[str, Any]:
        row = await queries().get_strategy(strategy_id)
        if row is None:
            raise HTTPException(404, f"no strategy {strategy_id!r}")
        return strategy_out(row)

    def strategy_values(raw: dict[str, Any], strategy: Strategy) -> dict[str, Any]:
        return {"name": strategy.name, "category": strategy.category, "symptoms": raw["symptoms"],
                "workflow_id": strategy.workflow_id, "priority": strategy.priority,
                "enabled": strategy.enabled, "definition": dict(raw)}

    @api.post("/strategies", status_code=201, response_model=StrategyRecord, tags=["strategies"],
              responses={**BAD_JSON, **CONFLICT, **INVALID, **UNAVAILABLE}, summary="Create a strategy",
              openapi_extra=_spec_body("Strategy", "A strategy exactly as in a rule file, as JSON"))
    async def create_strategy(request: Request, response: Response) -> Any:
        return await create_rule("strategy", request, response)

    @api.put("/strategies/{strategy_id}", response_model=StrategyRecord, tags=["strategies"],
             responses={**BAD_JSON, **NOT_FOUND, **CONFLICT, **INVALID, **UNAVAILABLE},
             summary="Replace a strategy (its version is bumped)",
             openapi_extra=_spec_body("Strategy", "The whole strategy; 'id' may be omitted"))
    async def replace_strategy(strategy_id: str, request: Request, response: Response) -> Any:
        return await replace_rule("strategy", strategy_id, request, response)

    @api.delete("/strategies/{strategy_id}", status_code=204, tags=["strategies"], response_class=Response,
                responses={204: {"description": "Deleted; the reload's outcome is in the "
                                                f"{RELOAD_HEADER} header"},
                           **NOT_FOUND, **CONFLICT, **UNAVAILABLE}, summary="Delete a strategy")
    async def delete_strategy(strategy_id: str) -> Response:
        return await delete_rule("strategy", strategy_id)

    # ------------------------------------------------------------------ executions

    def execution_done(task: asyncio.Task) -> None:
        service.metrics.executions_running.dec()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("manual execution failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            return
        execution = task.result()
        if execution is not None and execution.status in FINAL_EXECUTION:
            service.metrics.executions.labels(execution.workflow_id, execution.status).inc()

    @api.post("/workflows/{workflow_id}/execute", status_code=202, response_model=ExecuteAccepted,
              tags=["executions"], summary="Start a workflow by hand",
              responses={**NOT_FOUND, 409: {"model": Message, "description": "The workflow is inactive"},
                         422: {"model": RuleErrors, "description": "The event cannot be read"},
                         **UNAVAILABLE})
    async def execute_workflow(workflow_id: str,
                               body: Annotated[ExecuteRequest | None, Body()] = None) -> dict[str, Any]:
        queries()   # 503 while the service starts
        if service.runner is None:
            raise HTTPException(503, "the service is starting")
        workflow = await service.rules.workflow(workflow_id)
        if workflow is None:
            raise HTTPException(404, f"no active workflow {workflow_id!r}")
        if workflow.status not in ("active", "draft"):
            raise HTTPException(409, f"workflow {workflow_id!r} is {workflow.status}")
        body = body or ExecuteRequest()
        incident: dict[str, Any] = {}
        events: list[dict[str, Any]] = []
        if body.event is not None:
            try:
                event = parse_event(body.event)
            except MalformedEvent as exc:
                return JSONResponse(status_code=422, content={"detail": [
                    {"loc": ["body", "event"], "msg": str(exc), "type": "malformed_event"}]})
            if event is None:
                return JSONResponse(status_code=422, content={"detail": [
                    {"loc": ["body", "event"], "msg": "this watch line carries no event",
                     "type": "malformed_event"}]})
            incident = incident_from_event(event, "manual", workflow.trigger_config.severity)
            events = [event_context(event)]
        incident.update(body.incident or {})
        started = await service.runner.start(workflow, incident=incident, events=events,
                                             context=body.context or {})
        service.metrics.executions_running.inc()
        service.stats["executions"] = service.stats.get("executions", 0) + 1
        started.task.add_done_callback(execution_done)
        log.info("Workflow execution %s started by hand: workflow=%s version=%d", started.id, workflow.id,
                 workflow.version, extra={"execution_id": started.id})
        return {"execution_id": started.id, "status": "running", "workflow_id": workflow.id,
                "workflow_version": workflow.version, "dry_run": started.execution.dry_run,
                "href": f"{PREFIX}/executions/{started.id}"}

    @api.get("/executions", response_model=ExecutionPage, tags=["executions"],
             responses={400: {"model": Message, "description": "Invalid cursor"}, **UNAVAILABLE},
             summary="List executions, newest first")
    async def list_executions(
            workflow_id: str | None = None, status: ExecutionStatus | None = None,
            incident_id: str | None = None,
            since: Annotated[datetime | None, Query(description="started at or after (ISO 8601; UTC if no "
                                                                "zone)")] = None,
            until: Annotated[datetime | None, Query(description="started before")] = None,
            limit: Annotated[int, Query(ge=1, le=500)] = 50,
            offset: Annotated[int, Query(ge=0)] = 0,
            cursor: Annotated[str | None, Query(description=CURSOR)] = None) -> dict[str, Any]:
        try:
            page = await queries().list_executions(workflow_id=workflow_id, status=status,
                                                   incident_id=incident_id, since=since, until=until,
                                                   limit=limit, offset=offset, cursor=cursor)
        except BadCursor as exc:
            raise HTTPException(400, str(exc)) from None
        return page_out(page, limit, 0 if cursor else offset)

    @api.get("/executions/{execution_id}", response_model=ExecutionDetail, tags=["executions"],
             responses={**NOT_FOUND, **UNAVAILABLE}, summary="One execution with its step runs")
    async def get_execution(execution_id: str) -> dict[str, Any]:
        row = await queries().get_execution(execution_id)
        if row is None:
            raise HTTPException(404, f"no execution {execution_id!r}")
        running = service.runner.running() if service.runner is not None else []
        return {**row, "running_here": execution_id in running}

    @api.post("/executions/{execution_id}/cancel", response_model=CancelResult, tags=["executions"],
              responses={**NOT_FOUND, **UNAVAILABLE,
                         409: {"model": Message, "description": "Finished, or running on another replica"}},
              summary="Cancel a running execution")
    async def cancel_execution(execution_id: str) -> dict[str, Any]:
        q = queries()
        found = await q.execution_status(execution_id)
        here = service.runner is not None and execution_id in service.runner.running()
        if found is None and not here:
            raise HTTPException(404, f"no execution {execution_id!r}")
        if found is not None and found["status"] in FINAL_EXECUTION:
            raise HTTPException(409, f"execution {execution_id!r} already finished: {found['status']}")
        if not here or not service.runner.cancel(execution_id):
            owner = found["owner"] if found is not None else None
            raise HTTPException(409, f"execution {execution_id!r} is not running on this replica "
                                     f"({service.replica}){f'; it runs on {owner}' if owner else ''}")
        deadline = time.monotonic() + 5.0
        status = "cancelling"
        while time.monotonic() < deadline:
            found = await q.execution_status(execution_id)
            if found is not None and found["status"] in FINAL_EXECUTION:
                status = found["status"]
                break
            await asyncio.sleep(0.01)
        return {"execution_id": execution_id, "status": status}

    # ------------------------------------------------------------------ incidents

    @api.get("/incidents", response_model=IncidentPage, tags=["incidents"],
             responses={400: {"model": Message, "description": "Invalid cursor"}, **UNAVAILABLE},
             summary="List incidents, newest first")
    async def list_incidents(
            strategy_id: str | None = None, status: Literal["open", "closed"] | None = None,
            namespace: str | None = None, workflow_id: str | None = None,
            since: Annotated[datetime | None, Query(description="opened at or after (ISO 8601; UTC if no "
                                                                "zone)")] = None,
            limit: Annotated[int, Query(ge=1, le=500)] = 50,
            offset: Annotated[int, Query(ge=0)] = 0,
            cursor: Annotated[str | None, Query(description=CURSOR)] = None) -> dict[str, Any]:
        try:
            page = await queries().list_incidents(strategy_id=strategy_id, status=status, namespace=namespace,
                                                  workflow_id=workflow_id, since=since, limit=limit,
                                                  offset=offset, cursor=cursor)
        except BadCursor as exc:
            raise HTTPException(400, str(exc)) from None
        return page_out(page, limit, 0 if cursor else offset)

    @api.get("/incidents/{incident_id}", response_model=IncidentDetail, tags=["incidents"],
             responses={**NOT_FOUND, **UNAVAILABLE},
             summary="One incident, its execution and its events by state")
    async def get_incident(incident_id: str) -> dict[str, Any]:
        row = await queries().get_incident(incident_id)
        if row is None:
            raise HTTPException(404, f"no incident {incident_id!r}")
        return row

    # ------------------------------------------------------------------ events

    @api.post("/events", status_code=202, response_model=IngestResult, tags=["events"],
              summary="Take in events",
              responses={400: {"model": BadBody, "description": "The body is not JSON (recorded as a dead "
                                                                "letter)"},
                         413: {"model": Message, "description": "The body is too large"}, **UNAVAILABLE},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {
                      "description": "one event (any shape the intake accepts: a Kubernetes Event of "
                                     "core/v1 or events.k8s.io/v1, a watch line, an agent-manager envelope) "
                                     "or an array of them",
                      "oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}},
                  "application/x-ndjson": {"schema": {"type": "string",
                                                      "description": "one event per line"}}}}})
    async def post_events(request: Request) -> Any:
        if service.repo is None or service.rulebase is None:
            raise HTTPException(503, "the service is starting")
        raw = await read_limited(request, service.max_event_bytes * 1000)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        items: list[tuple[Any, str | None, str | None, dict]]
        if media in NDJSON_TYPES:
            # Each line goes in as bytes: the intake decodes it, and dead-letters a bad one.
            items = [(line, None, None, {}) for line in raw.splitlines() if line.strip()]
        else:
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                counts = await service.ingest([(raw, None, None, {})], "http")
                problem = "the body is empty" if not raw.strip() else f"the body is not JSON: {exc}"
                return JSONResponse(status_code=400, content={
                    "detail": f"{problem} (recorded as a dead letter)",
                    "dead_letters": counts.get("dead_letters", 0)})
            values = value if isinstance(value, list) else [value]
            items = [(v, None, None, {}) for v in values]
        counts = await service.ingest(items, "http")
        return {"received": len(items), **counts}

    # ------------------------------------------------------------------ rules

    async def rules_status() -> dict[str, Any]:
        if service.rules is None:
            raise HTTPException(503, "the service is starting")
        out: dict[str, Any] = service.rules.status.as_dict()
        gen = service.rules.generation
        out.update({"digest": gen.digest if gen else None, "strategies": len(gen.strategies) if gen else None,
                    "workflows": len(gen.workflows) if gen else None, "files": gen.files if gen else None,
                    "loaded_at": gen.loaded_at if gen else None, "cached_generation": None})
        if service.cache is not None:
            try:
                out["cached_generation"] = await service.cache.active_generation()
            except Exception as exc:  # the cache degrades by itself; never fail the status for it
                log.debug("cannot read the cached generation: %s", exc)
        return out

    @api.get("/rules/status", response_model=RulesStatus, tags=["rules"], responses=UNAVAILABLE,
             summary="The active rule generation and the last reload")
    async def get_rules_status() -> dict[str, Any]:
        return await rules_status()

    @api.post("/rules/reload", response_model=RulesStatus, tags=["rules"],
              responses={422: {"model": RulesStatus, "description": "The rules are invalid: 'problems' lists "
                                                                    "them as path:line; the previous "
                                                                    "generation stays active"},
                         **UNAVAILABLE},
              summary="Reload rule files and stored rules now")
    async def reload_rules() -> Any:
        if service.rules is None:
            raise HTTPException(503, "the service is starting")
        ok = await service.reload("api")
        body = await rules_status()
        if not ok:
            return JSONResponse(status_code=422, content=RulesStatus(**body).model_dump(mode="json"))
        return body

    app.include_router(api)

    # ------------------------------------------------------------------ operations

    @app.get("/metrics", tags=["operations"], response_class=Response, summary="Prometheus metrics",
             responses={200: {"description": "Prometheus text exposition format", "content": {
                 CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        return Response(content=service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Liveness: the process serves")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, tags=["operations"],
             summary="Readiness: started, PostgreSQL answers, NATS connected (Redis may be degraded)",
             responses={503: {"model": Readiness, "description": "Not ready: 'reasons' says why"}})
    async def readyz() -> Any:
        reasons: list[str] = []
        checks: dict[str, str] = {}
        if not service.ready:
            reasons.append("the service is not ready (starting or stopping)")
        if service.pool is None:
            checks["postgres"] = "down"
            reasons.append("PostgreSQL: no connection pool")
        else:
            try:
                await asyncio.wait_for(service.pool.fetchval("SELECT 1"), 2.0)
                checks["postgres"] = "ok"
            except Exception as exc:
                checks["postgres"] = "down"
                reasons.append(f"PostgreSQL: {type(exc).__name__}: {exc}")
        if service.bus is not None and service.bus.connected:
            checks["nats"] = "ok"
        else:
            checks["nats"] = "down"
            reasons.append("NATS is not connected")
        if service.cache is not None:
            await service.cache.ping()
        checks["redis"] = "ok" if service.cache is not None and service.cache.healthy else "degraded"
        try:
            body = await service.status()
        except Exception as exc:
            body = {"status_error": f"{type(exc).__name__}: {exc}"}
        body.update({"ready": not reasons, "checks": checks, "reasons": reasons})
        return JSONResponse(status_code=200 if not reasons else 503,
                            content=orjson.loads(orjson.dumps(body, default=str)))

    # ------------------------------------------------------------------ OpenAPI

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
    return app


__all__ = ["create_app"]
