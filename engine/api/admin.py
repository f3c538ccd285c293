"""Administration: API tokens and the audit trail (the admin role only).

A token is shown once, in the answer that creates it; the service keeps only its hash.
The audit trail is read-only here: no route edits or deletes a record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from engine.api.auth import Who
from engine.api.deps import AuditDep, TokensDep
from engine.api.models import CURSOR, NOT_FOUND, UNAVAILABLE, Limit, Message, Moment, Offset
from engine.auth import NAME, Role
from engine.durations import Duration
from engine.storage.queries import BadCursor

router = APIRouter()


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME.pattern, description="unique among live tokens")
    role: Role
    expires_in: Duration | None = Field(default=None, gt=0, le=10 * 365 * 86400,
                                        description="e.g. 30d; none: it never expires")


class TokenRecord(BaseModel):
    name: str
    role: str
    hint: str = Field(description="the token's first characters, to tell tokens apart")
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenRecord):
    token: str = Field(description="the token itself: shown this once, stored only as a hash")


class TokenList(BaseModel):
    items: list[TokenRecord]


class AuditRecord(BaseModel):
    id: int
    at: datetime
    actor_kind: str = Field(description="token, system, file, sql or cli")
    actor: str
    actor_role: str | None
    action: str
    target_kind: str | None
    target_id: str | None
    client: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditRecord]
    limit: int
    offset: int
    next_cursor: str | None


@router.post("/tokens", status_code=201, response_model=TokenCreated, tags=["tokens"],
             responses={409: {"model": Message, "description": "A live token has that name"}, **UNAVAILABLE},
             summary="Create a token (shown once)")
async def create_token(body: TokenRequest, who: Who, tokens: TokensDep) -> dict[str, Any]:
    issued = await tokens.issue(body.name, body.role, who, body.expires_in)
    if issued is None:
        raise HTTPException(409, f"a live token is named {body.name!r}: revoke it first")
    token, record = issued
    return {**record, "token": token}


@router.get("/tokens", response_model=TokenList, tags=["tokens"], responses=UNAVAILABLE,
            summary="List tokens (never the tokens themselves)")
async def list_tokens(tokens: TokensDep) -> dict[str, Any]:
    return {"items": await tokens.list()}


@router.delete("/tokens/{name}", status_code=204, response_class=Response, tags=["tokens"],
               responses={**NOT_FOUND, **UNAVAILABLE}, summary="Revoke a token")
async def revoke_token(name: str, who: Who, tokens: TokensDep) -> Response:
    if not await tokens.revoke(name, who):
        raise HTTPException(404, f"no live token {name!r}")
    return Response(status_code=204)


@router.get("/audit", response_model=AuditPage, tags=["audit"],
            responses={400: {"model": Message, "description": "Invalid cursor"}, **UNAVAILABLE},
            summary="The audit trail, newest first")
async def list_audit(
        audit: AuditDep, actor: str | None = None,
        action: Annotated[str | None, Query(description="a prefix: 'workflow.' is every workflow "
                                                        "change")] = None,
        target_kind: str | None = None, target_id: str | None = None,
        since: Annotated[Moment | None, Query(description="at or after (ISO 8601; UTC if no zone)")] = None,
        until: Annotated[Moment | None, Query(description="before")] = None,
        limit: Limit = 50,
        offset: Offset = 0,
        cursor: Annotated[str | None, Query(description=CURSOR)] = None) -> dict[str, Any]:
    try:
        page = await audit.page(actor=actor, action=action, target_kind=target_kind, target_id=target_id,
                                since=since, until=until, limit=limit, offset=offset, cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    return {"items": page.items, "limit": limit, "offset": 0 if cursor else offset,
            "next_cursor": page.next_cursor}
