"""Incidents: the bursts of strategy hits that became one incident each, read-only."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from engine.api.deps import QueriesDep
from engine.api.models import (
    CURSOR,
    NOT_FOUND,
    UNAVAILABLE,
    IncidentDetail,
    IncidentPage,
    Limit,
    Message,
    Moment,
    Offset,
)
from engine.payloads import shown
from engine.storage.queries import BadCursor

router = APIRouter(tags=["incidents"])


@router.get("/incidents", response_model=IncidentPage,
            responses={400: {"model": Message, "description": "Invalid cursor"}, **UNAVAILABLE},
            summary="List incidents, newest first")
async def list_incidents(
        q: QueriesDep,
        strategy_id: str | None = None, status: Literal["open", "closed"] | None = None,
        namespace: str | None = None, workflow_id: str | None = None,
        since: Annotated[Moment | None, Query(description="opened at or after (ISO 8601; UTC if no "
                                                          "zone)")] = None,
        limit: Limit = 50,
        offset: Offset = 0,
        cursor: Annotated[str | None, Query(description=CURSOR)] = None) -> dict[str, Any]:
    try:
        page = await q.list_incidents(strategy_id=strategy_id, status=status, namespace=namespace,
                                      workflow_id=workflow_id, since=since, limit=limit, offset=offset,
                                      cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    return {"items": page.items, "limit": limit, "offset": 0 if cursor else offset,
            "next_cursor": page.next_cursor}


@router.get("/incidents/{incident_id}", response_model=IncidentDetail,
            responses={**NOT_FOUND, **UNAVAILABLE},
            summary="One incident, its execution and its events by state")
async def get_incident(incident_id: str, q: QueriesDep) -> dict[str, Any]:
    row = await q.get_incident(incident_id)
    if row is None:
        raise HTTPException(404, f"no incident {shown(incident_id)}")
    return row
