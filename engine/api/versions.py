"""Versions of workflows and strategies: list, read, diff, restore; and experiments' per-arm outcomes.

Every change of a rule is a version, kept by the database whoever made it (migration 009):
a rule file (``file:<path>``), the API (``token:<name>``) or SQL (``sql:<user>``). A version
of a rule stored through the API or SQL can be restored: its content is validated like a PUT
against the active rules, written as the rule's next version (``change: restore``), audited
(``workflow.restore`` / ``strategy.restore``) and reloaded. A rule-file rule is changed by
editing ``rules/``: 409 here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response

from engine.api.auth import Who
from engine.api.deps import AuditDep, QueriesDep, RulesDep
from engine.api.models import (
    CONFLICT,
    INVALID,
    NOT_FOUND,
    UNAVAILABLE,
    ExperimentReport,
    Moment,
    Responses,
    RuleVersionDetail,
    RuleVersionDiff,
    RuleVersionList,
    StrategyRecord,
    WorkflowRecord,
)
from engine.api.rules import (
    STRATEGY,
    WORKFLOW,
    Kind,
    Row,
    _check,
    _file_conflict,
    _record,
    _reload,
    _unprocessable,
)
from engine.experiments import arms_of
from engine.outcomes import Outcome
from engine.payloads import shown
from engine.rules.history import to_yaml, unified_diff
from engine.storage.queries import Queries
from engine.storage.versions import RuleVersions

MAX_VERSION = 2**31 - 1   # a PostgreSQL integer

router = APIRouter()


def _versions(q: QueriesDep) -> RuleVersions:
    return RuleVersions(q.pool)


VersionsDep = Annotated[RuleVersions, Depends(_versions)]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION, description="a version number (1, 2, ...)")]
Against = Annotated[int | None, Query(ge=1, le=MAX_VERSION,
                                      description="the version to diff from (default: the one before)")]


async def _current(kind: Kind, ident: str, q: Queries) -> Row | None:
    return await kind.get(q, ident)


async def _list(kind: Kind, ident: str, q: Queries, versions: RuleVersions) -> Row:
    items = await versions.history(kind.name, ident)
    current = await _current(kind, ident, q)
    if not items and current is None:
        raise HTTPException(404, f"no {kind.name} {shown(ident)}, and none was ever kept")
    now = current["version"] if current is not None else None
    return {"id": ident, "kind": kind.name, "current_version": now,
            "source": current["source"] if current is not None else None,
            "items": [{**item, "current": item["version"] == now} for item in items]}


async def _one(kind: Kind, ident: str, version: int, versions: RuleVersions) -> Row:
    found = await versions.get(kind.name, ident, version)
    if found is None:
        raise HTTPException(404, f"no version {version} of {kind.name} {shown(ident)}")
    return found


async def _detail(kind: Kind, ident: str, version: int, q: Queries, versions: RuleVersions) -> Row:
    found = await _one(kind, ident, version, versions)
    current = await _current(kind, ident, q)
    content = kind.definition(found.pop("row"))
    return {**found, "id": ident, "kind": kind.name, "content": content, "yaml": to_yaml(kind.name, content),
            "current": current is not None and current["version"] == version}


async def _diff(kind: Kind, ident: str, version: int, against: int | None, versions: RuleVersions) -> Row:
    new = await _one(kind, ident, version, versions)
    old: Row | None
    if against is None:
        earlier = [v["version"] for v in await versions.history(kind.name, ident) if v["version"] < version]
        old = await _one(kind, ident, max(earlier), versions) if earlier else None
    else:
        old = await _one(kind, ident, against, versions)
    new_spec = kind.definition(new["row"])
    old_spec = kind.definition(old["row"]) if old is not None else None
    text = unified_diff(kind.name, ident, None if old is None else (old["version"], old_spec or {}),
                        (version, new_spec))
    return {"id": ident, "kind": kind.name, "from_version": old["version"] if old is not None else None,
            "to_version": version, "from_digest": old["digest"] if old is not None else None,
            "to_digest": new["digest"], "identical": old is not None and old_spec == new_spec, "diff": text}


async def _restore(kind: Kind, ident: str, version: int, response: Response, q: Queries, rules: Any,
                   versions: RuleVersions, audit: Any, who: Any) -> Any:
    found = await _one(kind, ident, version, versions)
    current = await _current(kind, ident, q)
    gen = rules.generation
    if (current is not None and current["source"] == "file") or (
            current is None and gen is not None and ident in kind.of(gen)):
        raise _file_conflict(kind, ident, rules)
    if found["source"] == "file":
        raise HTTPException(409, f"version {version} of {kind.name} {shown(ident)} came from a rule file: "
                                 f"bring it back by editing {rules.directory}")
    raw = kind.definition(found["row"])
    raw.pop("version", None)
    raw["id"] = ident
    spec, errors = await _check(kind, raw, q, gen, (kind.name, ident) if current is not None else None,
                                rules.policy)
    if errors:
        return _unprocessable(errors)
    row = await versions.restore(kind.name, ident, kind.values(raw, spec), version, who,
                                 exists=current is not None)
    if row is None:
        raise HTTPException(409, f"{kind.name} {shown(ident)} was changed meanwhile (deleted, created, or "
                                 "taken over by a rule file): read its versions again")
    await audit.record(who, f"{kind.name}.restore", kind.name, ident, {
        "from_version": version, "from_digest": found["digest"], "version": row["version"],
        "before_version": current["version"] if current is not None else None})
    reloaded = await _reload(rules, response)
    return _record(kind, row, rules, reloaded)


# ----------------------------------------------------------------------------- routes

RESTORE_CONFLICT: Responses = {409: {**CONFLICT[409], "description": (
    "A rule-file rule (edit it under rules/), a version that came from a rule file, or a change meanwhile")}}


@router.get("/workflows/{workflow_id}/versions", response_model=RuleVersionList, tags=["workflows"],
            responses={**NOT_FOUND, **UNAVAILABLE}, summary="Every version of a workflow, oldest first")
async def list_workflow_versions(workflow_id: str, q: QueriesDep, versions: VersionsDep) -> Row:
    return await _list(WORKFLOW, workflow_id, q, versions)


@router.get("/workflows/{workflow_id}/versions/{version}", response_model=RuleVersionDetail,
            tags=["workflows"], responses={**NOT_FOUND, **UNAVAILABLE},
            summary="One version of a workflow: its content, digest, author and time")
async def get_workflow_version(workflow_id: str, version: VersionNumber, q: QueriesDep,
                               versions: VersionsDep) -> Row:
    return await _detail(WORKFLOW, workflow_id, version, q, versions)


@router.get("/workflows/{workflow_id}/versions/{version}/diff", response_model=RuleVersionDiff,
            tags=["workflows"], responses={**NOT_FOUND, **UNAVAILABLE},
            summary="Unified diff of a workflow's YAML from another version (default: the one before)")
async def diff_workflow_version(workflow_id: str, version: VersionNumber, versions: VersionsDep,
                                against: Against = None) -> Row:
    return await _diff(WORKFLOW, workflow_id, version, against, versions)


@router.post("/workflows/{workflow_id}/versions/{version}/restore", response_model=WorkflowRecord,
             tags=["workflows"], responses={**NOT_FOUND, **RESTORE_CONFLICT, **INVALID, **UNAVAILABLE},
             summary="Make an old version of a stored workflow its next version (audited)")
async def restore_workflow_version(workflow_id: str, version: VersionNumber, response: Response,
                                   q: QueriesDep, rules: RulesDep, versions: VersionsDep, audit: AuditDep,
                                   who: Who) -> Any:
    return await _restore(WORKFLOW, workflow_id, version, response, q, rules, versions, audit, who)


@router.get("/strategies/{strategy_id}/versions", response_model=RuleVersionList, tags=["strategies"],
            responses={**NOT_FOUND, **UNAVAILABLE}, summary="Every version of a strategy, oldest first")
async def list_strategy_versions(strategy_id: str, q: QueriesDep, versions: VersionsDep) -> Row:
    return await _list(STRATEGY, strategy_id, q, versions)


@router.get("/strategies/{strategy_id}/versions/{version}", response_model=RuleVersionDetail,
            tags=["strategies"], responses={**NOT_FOUND, **UNAVAILABLE},
            summary="One version of a strategy: its content, digest, author and time")
async def get_strategy_version(strategy_id: str, version: VersionNumber, q: QueriesDep,
                               versions: VersionsDep) -> Row:
    return await _detail(STRATEGY, strategy_id, version, q, versions)


@router.get("/strategies/{strategy_id}/versions/{version}/diff", response_model=RuleVersionDiff,
            tags=["strategies"], responses={**NOT_FOUND, **UNAVAILABLE},
            summary="Unified diff of a strategy's YAML from another version (default: the one before)")
async def diff_strategy_version(strategy_id: str, version: VersionNumber, versions: VersionsDep,
                                against: Against = None) -> Row:
    return await _diff(STRATEGY, strategy_id, version, against, versions)


@router.post("/strategies/{strategy_id}/versions/{version}/restore", response_model=StrategyRecord,
             tags=["strategies"], responses={**NOT_FOUND, **RESTORE_CONFLICT, **INVALID, **UNAVAILABLE},
             summary="Make an old version of a stored strategy its next version (audited)")
async def restore_strategy_version(strategy_id: str, version: VersionNumber, response: Response,
                                   q: QueriesDep, rules: RulesDep, versions: VersionsDep, audit: AuditDep,
                                   who: Who) -> Any:
    return await _restore(STRATEGY, strategy_id, version, response, q, rules, versions, audit, who)


# ----------------------------------------------------------------------------- experiments


@router.get("/experiments/{strategy_id}", response_model=ExperimentReport, tags=["experiments"],
            responses={**NOT_FOUND, **UNAVAILABLE},
            summary="A strategy's experiment: per arm, incidents, executions by outcome, time to close, "
                    "incidents that fired again within the cooldown")
async def get_experiment(strategy_id: str, rules: RulesDep, versions: VersionsDep,
                         since: Annotated[Moment | None, Query(description="incidents opened at or after "
                                                                           "(ISO 8601)")] = None) -> Row:
    gen = rules.generation
    strategy = gen.strategies.get(strategy_id) if gen is not None else None
    measured = await versions.arm_outcomes(strategy_id, since)
    if (strategy is None or strategy.experiment is None) and not measured:
        raise HTTPException(404, f"strategy {shown(strategy_id)} runs no experiment and has no incidents "
                                 "assigned to arms")
    configured = arms_of(strategy)
    by_arm = {m["arm"]: m for m in measured}
    total = sum(m["incidents"] for m in measured)
    arms = []
    for arm in configured:
        seen = by_arm.pop(arm["arm"], None) or {
            "incidents": 0, "open": 0, "executions": 0, "refired": 0, "suppressed_events": 0,
            "late_events": 0, "outcomes": {**{o.value: 0 for o in Outcome}, "running": 0},
            "open_to_close_seconds": None}
        arms.append({**seen, **arm})
    arms += [{**m, "weight": None, "share": None} for m in by_arm.values()]
    for arm in arms:
        arm["observed_share"] = arm["incidents"] / total if total else None
    key = None
    if strategy is not None and strategy.experiment is not None:
        key = strategy.experiment.key or strategy.key_fields
    return {"strategy_id": strategy_id, "active": bool(configured), "key": key, "incidents": total,
            "since": since, "arms": arms}
