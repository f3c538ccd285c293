"""The console's pages: incidents, one incident's timeline, executions, workflow graphs,
approvals (and deciding them), the audit trail, and the experiments' per-arm outcomes.

They read through the same parts as the API (``ApiDeps``: its queries, rules, approvals
and audit trail) plus :class:`engine.storage.console.ConsoleQueries`; a decision goes through
:func:`engine.api.approvals.decide`, the API's own, so the rules and the audit records of a
decision are the same whichever door it came through (channel ``console``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from engine import approvals as core
from engine.api.approvals import decide
from engine.api.deps import Deps
from engine.api.versions import get_experiment
from engine.auth import Permission
from engine.outcomes import Outcome
from engine.rules.model import Workflow
from engine.storage.approvals import shown as approval_view
from engine.storage.console import ConsoleQueries, IncidentFilter
from engine.storage.queries import BadCursor
from engine.storage.versions import RuleVersions
from engine.ui import graph, timeline
from engine.ui.access import UI, ConsoleError, User, read_form
from engine.ui.render import HEADERS, page

router = APIRouter(prefix=UI, include_in_schema=False)
PAGE_SIZE = 100


def _console(deps: Any) -> ConsoleQueries:
    if deps.queries is None:
        raise ConsoleError(503, "the service is starting")
    return ConsoleQueries(deps.queries.pool)


def _part(deps: Any, name: str) -> Any:
    value = getattr(deps, name)
    if value is None:
        raise ConsoleError(503, "the service is starting")
    return value


def _moment(value: str | None) -> datetime | None:
    """A filter's time (``datetime-local`` or ISO 8601; UTC if no zone), or None if unreadable."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if not 1 <= moment.year <= 9999:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _short(value: str | None, limit: int = 200) -> str | None:
    return value[:limit] if value else None


@router.get("/")
async def home(who: User) -> Response:
    return RedirectResponse(f"{UI}/incidents", status_code=303, headers=HEADERS)


@router.get("/incidents")
async def incidents(request: Request, deps: Deps, who: User, strategy: str | None = None,
                    namespace: str | None = None, status: str | None = None, since: str | None = None,
                    until: str | None = None, cursor: str | None = None) -> Response:
    console = _console(deps)
    filters = IncidentFilter(strategy_id=_short(strategy), namespace=_short(namespace),
                             status=status if status in ("open", "closed") else None,
                             since=_moment(since), until=_moment(until))
    try:
        found = await console.incidents(filters, limit=PAGE_SIZE, cursor=_short(cursor, 400))
    except BadCursor as exc:
        raise ConsoleError(400, str(exc)) from None
    counts = await console.incident_counts(filters)
    choices = await console.choices()
    shown = {"strategy": strategy or "", "namespace": namespace or "", "status": filters.status or "",
             "since": since or "", "until": until or ""}
    return page(request, "incidents.html", who, items=found.items, next_cursor=found.next_cursor,
                counts=counts, choices=choices, filters=shown, first_page=not cursor)


async def _workflow(deps: Any, workflow_id: str | None, version: int | None = None) -> Workflow | None:
    if not workflow_id or deps.rules is None:
        return None
    try:
        return await deps.rules.workflow(workflow_id, version)
    except Exception:   # a version that no longer validates: the page goes on without its graph
        return None


def _runs(execution: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each step's last run (the graph colours a node by it)."""
    runs: dict[str, dict[str, Any]] = {}
    for step in (execution or {}).get("steps", []):
        runs[step["step_id"]] = step
    return runs


def _inputs(workflow: Workflow | None) -> dict[str, Any]:
    """Each step's config as the workflow states it (templates not yet filled in)."""
    return {step.id: step.config for step in workflow.steps} if workflow is not None else {}


@router.get("/incidents/{incident_id}")
async def incident(request: Request, incident_id: str, deps: Deps, who: User) -> Response:
    queries = _part(deps, "queries")
    row = await queries.get_incident(incident_id)
    if row is None:
        raise ConsoleError(404, f"no incident {incident_id[:100]!r}")
    events = await _console(deps).incident_events(incident_id)
    execution = await queries.get_execution(row["execution_id"]) if row.get("execution_id") else None
    workflow = await _workflow(deps, execution["workflow_id"] if execution else row.get("workflow_id"),
                               execution["workflow_version"] if execution else None)
    audit: list[dict[str, Any]] = []
    if execution is not None and who.may(Permission.ADMIN) and deps.audit is not None:
        audit = (await deps.audit.page(target_kind="execution", target_id=execution["id"], limit=200)).items
    pending = []
    if execution is not None and deps.approvals is not None:
        pending = [approval_view(a) for a in await deps.approvals.list(status="pending",
                                                                       execution_id=execution["id"])]
    return page(request, "incident.html", who, incident=row, events=events, execution=execution,
                entries=timeline.entries(row, events, execution, audit),
                analyses=timeline.analysis(execution), pending=pending, inputs=_inputs(workflow),
                graph=graph.svg(workflow, _runs(execution)) if workflow is not None else None)


@router.get("/executions/{execution_id}")
async def execution(request: Request, execution_id: str, deps: Deps, who: User) -> Response:
    queries = _part(deps, "queries")
    row = await queries.get_execution(execution_id)
    if row is None:
        raise ConsoleError(404, f"no execution {execution_id[:100]!r}")
    workflow = await _workflow(deps, row["workflow_id"], row["workflow_version"])
    return page(request, "execution.html", who, execution=row, inputs=_inputs(workflow),
                graph=graph.svg(workflow, _runs(row)) if workflow is not None else None)


@router.get("/workflows/{workflow_id}")
async def workflow_graph(request: Request, workflow_id: str, deps: Deps, who: User) -> Response:
    wf = await _workflow(deps, workflow_id)
    if wf is None:
        raise ConsoleError(404, f"no active workflow {workflow_id[:100]!r}")
    return page(request, "workflow.html", who, workflow=wf, graph=graph.svg(wf), edges=graph.edges(wf))


@router.get("/approvals")
async def approvals_page(request: Request, deps: Deps, who: User, decided: str | None = None) -> Response:
    notice = f"approval {decided[:60]} decided" if decided else None
    return await _approvals(request, deps, who, notice=notice)


async def _approvals(request: Request, deps: Any, who: Any, *, error: str | None = None,
                     notice: str | None = None, status: int = 200) -> Response:
    store = _part(deps, "approvals")
    waiting = [approval_view(a) for a in await store.list(status="pending", limit=100)]
    recent = [approval_view(a) for a in await store.list(status=None, limit=30)
              if a.status != core.ApprovalStatus.PENDING]
    return page(request, "approvals.html", who, status=status, waiting=waiting, recent=recent, error=error,
                notice=notice)


async def _decide(request: Request, approval_id: str, decision: Literal["approve", "deny"], deps: Any,
                  who: Any) -> Response:
    form = await read_form(request)
    store, audit = _part(deps, "approvals"), _part(deps, "audit")
    try:
        decided = await decide(store, audit, approval_id, decision, who, who.name, core.Channel.CONSOLE,
                               _short(form.get("comment"), 1000) or None, _short(form.get("plan_hash"), 128))
    except HTTPException as exc:
        return await _approvals(request, deps, who, error=str(exc.detail), status=exc.status_code)
    back = form.get("back", "")
    target = back if back.startswith(f"{UI}/incidents/") and "//" not in back else f"{UI}/approvals"
    return RedirectResponse(f"{target}?decided={decided.id}", status_code=303, headers=HEADERS)


@router.post("/approvals/{approval_id}/approve")
async def approve(request: Request, approval_id: str, deps: Deps, who: User) -> Response:
    return await _decide(request, approval_id, "approve", deps, who)


@router.post("/approvals/{approval_id}/deny")
async def deny(request: Request, approval_id: str, deps: Deps, who: User) -> Response:
    return await _decide(request, approval_id, "deny", deps, who)


@router.get("/audit")
async def audit_page(request: Request, deps: Deps, who: User, actor: str | None = None,
                     action: str | None = None, target_id: str | None = None,
                     cursor: str | None = None) -> Response:
    audit = _part(deps, "audit")
    try:
        found = await audit.page(actor=_short(actor), action=_short(action), target_id=_short(target_id),
                                 limit=100, cursor=_short(cursor, 400))
    except BadCursor as exc:
        raise ConsoleError(400, str(exc)) from None
    return page(request, "audit.html", who, records=found.items, next_cursor=found.next_cursor,
                filters={"actor": actor or "", "action": action or "", "target_id": target_id or ""})


@router.get("/experiments")
async def experiments(request: Request, deps: Deps, who: User) -> Response:
    """Every experiment of the active rules, per arm: the API's own report (``GET /experiments/{id}``)."""
    queries, rules = _part(deps, "queries"), _part(deps, "rules")
    gen = rules.generation
    running = sorted(s.id for s in (gen.strategies.values() if gen is not None else ())
                     if s.experiment is not None)
    store = RuleVersions(queries.pool)
    reports = [await get_experiment(strategy_id, rules, store, None) for strategy_id in running]
    return page(request, "experiments.html", who, reports=reports, outcomes=[o.value for o in Outcome])
