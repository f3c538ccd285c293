"""Executions: started by hand, listed, read with their step runs, cancelled.

Starting is ``executions.start`` and nothing else: it returns once the execution is
recorded, so its id can be read back at once; counting and watching executions is the
business of whoever implements :class:`~engine.api.deps.Executions` (the service).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from engine.api.auth import Who
from engine.api.body import json_body
from engine.api.deps import AuditDep, Deps, ExecutionsDep, QueriesDep, RulesDep
from engine.api.edge import clean_errors
from engine.api.models import (
    BAD_JSON,
    CURSOR,
    NOT_FOUND,
    PREFIX,
    UNAVAILABLE,
    CancelResult,
    ExecuteAccepted,
    ExecuteRequest,
    ExecutionDetail,
    ExecutionPage,
    ExecutionStatus,
    Limit,
    Message,
    Moment,
    Offset,
    RuleErrors,
)
from engine.auth import Principal, Role
from engine.correlation import event_context, incident_from_event
from engine.events import parse_event
from engine.exceptions import MalformedEvent
from engine.payloads import shown
from engine.policy import override_problem, overrides
from engine.rules.model import Workflow
from engine.statuses import FINAL_EXECUTION
from engine.storage.queries import BadCursor
from steps import REGISTRY

log = logging.getLogger(__name__)

CANCEL_WAIT = 5.0   # seconds a cancel waits for the execution to record its final status

router = APIRouter(tags=["executions"])


def _bad_event(msg: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [
        {"loc": ["body", "event"], "msg": msg, "type": "malformed_event"}]})


def _overrides(workflow: Workflow, body: ExecuteRequest, who: Principal,
               roles: frozenset[Role]) -> list[str] | JSONResponse:
    """The fields of the body that would reach agent-manager (``incident.namespace``,
    ``context.replicas``, ...): a target or a param set by hand. Only a role in
    ``policy.override_roles`` may set them (403 otherwise), and only to values that pass the
    policy's name rules (422). Returns them, for the audit trail."""
    configs = [step.config for step in workflow.steps
               if (kind := REGISTRY.get(step.type)) is not None and kind.calls_agent_manager]
    if not configs:
        return []   # nothing in this workflow reaches the cluster: the fields are only words
    found = overrides(body.incident or {}, body.context or {}, configs)
    if not found:
        return []
    if who.role not in roles:
        allowed = ", ".join(sorted(roles)) or "none"
        raise HTTPException(403, f"{', '.join(found)}: would reach agent-manager in workflow "
                                 f"{workflow.id!r}; only these roles may set it by hand: {allowed} "
                                 "(policy.override_roles)")
    values = {"incident": body.incident or {}, "context": body.context or {}}
    problems = []
    for name in found:
        root, field = name.split(".", 1)
        problem = override_problem(name, values[root][field])
        if problem is not None:
            problems.append({"loc": ["body", root, field], "msg": problem, "type": "policy"})
    if problems:
        return JSONResponse(status_code=422, content={"detail": problems})
    return found


@router.post("/workflows/{workflow_id}/execute", status_code=202, response_model=ExecuteAccepted,
             summary="Start a workflow by hand",
             responses={**BAD_JSON, **NOT_FOUND,
                        409: {"model": Message, "description": "The workflow is inactive"},
                        403: {"model": Message, "description": "The body sets what reaches agent-manager, "
                                                              "and the role may not (policy.override_roles)"},
                        422: {"model": RuleErrors, "description": "The body does not fit ExecuteRequest, the "
                                                                  "event cannot be read, or a field set by "
                                                                  "hand is not a Kubernetes name"},
                        **UNAVAILABLE},
             openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/ExecuteRequest"}}}}})
async def execute_workflow(workflow_id: str, request: Request, rules: RulesDep, executions: ExecutionsDep,
                           audit: AuditDep, who: Who, deps: Deps) -> Any:
    # Read here, not by FastAPI: bounded in size, and within engine.payloads' bounds.
    raw = await json_body(request, empty={})   # no body: all defaults (a JSON null is not an object)
    try:
        body = ExecuteRequest.model_validate(raw)
    except ValidationError as exc:
        return JSONResponse(status_code=422, content={"detail": clean_errors(exc.errors(), ("body",))})
    workflow = await rules.workflow(workflow_id)
    if workflow is None:
        raise HTTPException(404, f"no active workflow {shown(workflow_id)}")
    if workflow.status not in ("active", "draft"):
        raise HTTPException(409, f"workflow {shown(workflow_id)} is {workflow.status}")
    incident: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    if body.event is not None:
        try:
            event = parse_event(body.event)
        except MalformedEvent as exc:
            return _bad_event(str(exc))
        if event is None:
            return _bad_event("this watch line carries no event")
        incident = incident_from_event(event, "manual", workflow.trigger_config.severity)
        events = [event_context(event)]
    overridden = _overrides(workflow, body, who, deps.override_roles)
    if isinstance(overridden, JSONResponse):
        return overridden
    incident.update(body.incident or {})
    started = await executions.start(workflow, incident=incident, events=events, context=body.context or {},
                                     triggered_by=who.name)
    status = "queued" if started.queued else "running"
    log.info("Workflow execution %s %s by hand by %s: workflow=%s version=%d", started.id,
             "queued" if started.queued else "started", who.label, workflow.id, workflow.version,
             extra={"execution_id": started.id})
    await audit.record(who, "execution.start", "execution", started.id, {
        "workflow_id": workflow.id, "workflow_version": workflow.version,
        "dry_run": started.execution.dry_run, "event": body.event is not None,
        "incident_fields": sorted(body.incident or {}), "context_fields": sorted(body.context or {}),
        "overrides": overridden})
    return {"execution_id": started.id, "status": status, "workflow_id": workflow.id,
            "workflow_version": workflow.version, "dry_run": started.execution.dry_run,
            "href": f"{PREFIX}/executions/{started.id}"}


@router.get("/executions", response_model=ExecutionPage,
            responses={400: {"model": Message, "description": "Invalid cursor"}, **UNAVAILABLE},
            summary="List executions, newest first")
async def list_executions(
        q: QueriesDep,
        workflow_id: str | None = None, status: ExecutionStatus | None = None,
        incident_id: str | None = None,
        since: Annotated[Moment | None, Query(description="started at or after (ISO 8601; UTC if no "
                                                          "zone)")] = None,
        until: Annotated[Moment | None, Query(description="started before")] = None,
        limit: Limit = 50,
        offset: Offset = 0,
        cursor: Annotated[str | None, Query(description=CURSOR)] = None) -> dict[str, Any]:
    try:
        page = await q.list_executions(workflow_id=workflow_id, status=status, incident_id=incident_id,
                                       since=since, until=until, limit=limit, offset=offset, cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    return {"items": page.items, "limit": limit, "offset": 0 if cursor else offset,
            "next_cursor": page.next_cursor}


@router.get("/executions/{execution_id}", response_model=ExecutionDetail,
            responses={**NOT_FOUND, **UNAVAILABLE}, summary="One execution with its step runs")
async def get_execution(execution_id: str, q: QueriesDep, deps: Deps) -> dict[str, Any]:
    row = await q.get_execution(execution_id)
    if row is None:
        raise HTTPException(404, f"no execution {shown(execution_id)}")
    running = deps.executions.running() if deps.executions is not None else []
    return {**row, "running_here": execution_id in running}


@router.post("/executions/{execution_id}/cancel", response_model=CancelResult,
             responses={**NOT_FOUND, **UNAVAILABLE,
                        409: {"model": Message, "description": "Finished, or running on another replica"}},
             summary="Cancel a running or queued execution")
async def cancel_execution(execution_id: str, q: QueriesDep, deps: Deps, audit: AuditDep,
                           who: Who) -> dict[str, Any]:
    found = await q.execution_status(execution_id)
    executions = deps.executions
    here = executions is not None and execution_id in executions.running()
    if found is None and not here:
        raise HTTPException(404, f"no execution {shown(execution_id)}")
    if found is not None and found["status"] in FINAL_EXECUTION:
        raise HTTPException(409, f"execution {shown(execution_id)} already finished: {found['status']}")
    if (found is not None and found["status"] == "queued" and executions is not None
            and await executions.cancel_queued(execution_id)):
        # Still in the queue (on any replica): it never starts.
        await audit.record(who, "execution.cancel", "execution", execution_id, {"queued": True})
        return {"execution_id": execution_id, "status": "cancelled"}
    here = executions is not None and execution_id in executions.running()   # it may have started since
    cancelled = executions is not None and here and executions.cancel(execution_id)
    if not cancelled and executions is not None and found is not None and found["status"] == "running":
        # Another replica's: with Temporal it is cancelled there all the same.
        cancelled = await executions.cancel_anywhere(execution_id)
    if executions is None or not cancelled:
        owner = found["owner"] if found is not None else None
        raise HTTPException(409, f"execution {shown(execution_id)} is not running on this replica "
                                 f"({deps.replica}){f'; it runs on {owner}' if owner else ''}")
    await audit.record(who, "execution.cancel", "execution", execution_id)
    # The runner records the final status as the execution's task unwinds; the protocol
    # hands out no task for executions it did not start here, so read the store briefly.
    deadline = time.monotonic() + CANCEL_WAIT
    status = "cancelling"
    while time.monotonic() < deadline:
        found = await q.execution_status(execution_id)
        if found is not None and found["status"] in FINAL_EXECUTION:
            status = found["status"]
            break
        await asyncio.sleep(0.01)
    return {"execution_id": execution_id, "status": status}
