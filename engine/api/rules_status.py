"""The active rule generation, the last reload and its problems, and a reload on demand."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from engine.api.auth import Who
from engine.api.deps import AuditDep, Deps, Rules, RulesDep
from engine.api.models import UNAVAILABLE, RulesStatus

log = logging.getLogger(__name__)

router = APIRouter(tags=["rules"])


async def _status(rules: Rules, deps: Deps) -> dict[str, Any]:
    out: dict[str, Any] = rules.status.as_dict()   # warnings included: stored rules left out
    gen = rules.generation
    out.update({"digest": gen.digest if gen else None, "strategies": len(gen.strategies) if gen else None,
                "workflows": len(gen.workflows) if gen else None, "files": gen.files if gen else None,
                "loaded_at": gen.loaded_at if gen else None, "cached_generation": None})
    try:
        out["cached_generation"] = await deps.cached_generation()
    except Exception as exc:  # the cache degrades by itself; never fail the status for it
        log.debug("cannot read the cached generation: %s", exc)
    return out


@router.get("/rules/status", response_model=RulesStatus, responses=UNAVAILABLE,
            summary="The active rule generation and the last reload")
async def get_rules_status(rules: RulesDep, deps: Deps) -> dict[str, Any]:
    return await _status(rules, deps)


@router.post("/rules/reload", response_model=RulesStatus,
             responses={422: {"model": RulesStatus, "description": "The rules are invalid: 'problems' lists "
                                                                   "them as path:line; the previous "
                                                                   "generation stays active"},
                        **UNAVAILABLE},
             summary="Reload rule files and stored rules now")
async def reload_rules(rules: RulesDep, deps: Deps, audit: AuditDep, who: Who) -> Any:
    before = rules.generation.digest if rules.generation is not None else None
    ok = await rules.reload("api")
    body = await _status(rules, deps)
    await audit.record(who, "rules.reload", "rules", None, {
        "ok": ok, "before": before, "after": body["digest"], "generation": body["generation"],
        "problems": len(body["problems"])})
    if not ok:
        return JSONResponse(status_code=422, content=RulesStatus(**body).model_dump(mode="json"))
    return body
