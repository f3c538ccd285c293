"""Approvals: what waits for a human, and the decisions (engine.approvals).

``GET /approvals`` lists the pending ones (``?status=`` for others), ``GET /approvals/{id}``
shows one with its plan; ``POST /approvals/{id}/approve`` and ``/deny`` decide (the approve
permission: operator, admin). ``POST /approvals/slack`` takes Slack's interactive buttons:
no token, but Slack's request signature (``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{body}``
with the app's signing secret, timestamps within 5 minutes), and the Slack user must be
mapped to an approver (``approvals.slack.users``).

Whoever decides, the same rules hold (:func:`engine.approvals.problem`): the first decision
wins, a late or replayed one is 409 and changes nothing, a decision made on a plan hash that
is no longer the approval's is 409, only the listed approvers decide, and the principal that
started the execution by hand may not decide on its change. Each decision, and each refused
attempt, is on the audit trail.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from engine import approvals as core
from engine.api.auth import Who
from engine.api.body import json_body, read_limited
from engine.api.deps import ApprovalsApi, ApprovalsDep, AuditDep, Deps
from engine.api.edge import clean_errors
from engine.api.models import (
    BAD_JSON,
    NOT_FOUND,
    UNAVAILABLE,
    ApprovalList,
    ApprovalState,
    ApprovalView,
    Decision,
    Message,
    SlackReply,
)
from engine.auth import Principal, Role
from engine.exceptions import BadPayload
from engine.payloads import loads, shown
from engine.storage.approvals import shown as view

log = logging.getLogger(__name__)

MAX_SLACK_BODY = 64 * 1024

router = APIRouter(tags=["approvals"])
# Signed by Slack, not by a token: mounted without the token dependency (engine.api.auth.SIGNED).
slack_router = APIRouter(tags=["approvals"])

DECIDE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND, **BAD_JSON, **UNAVAILABLE,
    403: {"model": Message, "description": "Not an approver of this change, or the token that started "
                                           "the execution by hand"},
    409: {"model": Message, "description": "Already decided, expired, or the plan changed"},
}


@router.get("/approvals", response_model=ApprovalList, responses={**UNAVAILABLE},
            summary="Approvals, newest first (pending ones by default)")
async def list_approvals(
        approvals: ApprovalsDep,
        status: Annotated[ApprovalState | Literal["all"],
                          Query(description="pending (the default): waiting for a decision")] = "pending",
        execution_id: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    items = await approvals.list(status=None if status == "all" else status, execution_id=execution_id,
                                 limit=limit)
    return {"items": [view(a) for a in items]}


@router.get("/approvals/{approval_id}", response_model=ApprovalView, responses={**NOT_FOUND, **UNAVAILABLE},
            summary="One approval, with the plan it is for")
async def get_approval(approval_id: str, approvals: ApprovalsDep) -> dict[str, Any]:
    approval = await approvals.get(approval_id)
    if approval is None:
        raise HTTPException(404, f"no approval {shown(approval_id)}")
    return view(approval)


async def _body(request: Request) -> Decision | JSONResponse:
    raw = await json_body(request, empty={})
    try:
        return Decision.model_validate(raw)
    except ValidationError as exc:
        return JSONResponse(status_code=422, content={"detail": clean_errors(exc.errors(), ("body",))})


@router.post("/approvals/{approval_id}/approve", response_model=ApprovalView, responses=DECIDE_RESPONSES,
             summary="Approve the change (the plan_hash you read, to be sure it is the one you approve)",
             openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/Decision"}}}}})
async def approve(approval_id: str, request: Request, approvals: ApprovalsDep, audit: AuditDep,
                  who: Who) -> Any:
    body = await _body(request)
    if isinstance(body, JSONResponse):
        return body
    return view(await decide(approvals, audit, approval_id, "approve", who, who.name, core.Channel.API,
                             body.comment, body.plan_hash))


@router.post("/approvals/{approval_id}/deny", response_model=ApprovalView, responses=DECIDE_RESPONSES,
             summary="Deny the change: the step takes its on_failure path",
             openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/Decision"}}}}})
async def deny(approval_id: str, request: Request, approvals: ApprovalsDep, audit: AuditDep, who: Who) -> Any:
    body = await _body(request)
    if isinstance(body, JSONResponse):
        return body
    return view(await decide(approvals, audit, approval_id, "deny", who, who.name, core.Channel.API,
                             body.comment, body.plan_hash))


async def decide(approvals: ApprovalsApi, audit: Any, approval_id: str, decision: Literal["approve", "deny"],
                 who: Principal, name: str, channel: str, comment: str | None,
                 plan_hash: str | None) -> core.Approval:
    """One decision by ``who`` (named ``name`` among approvers), or the HTTP error saying why not."""
    approval = await approvals.get(approval_id)
    if approval is None:
        raise HTTPException(404, f"no approval {shown(approval_id)}")
    refused = core.problem(approval, decision, name, plan_hash=plan_hash)
    if refused is None:
        try:
            decided = await approvals.decide(approval, decision, who, channel, comment, plan_hash=plan_hash)
        except core.DecisionRefused as exc:     # Temporal's update validator said no
            refused = exc.status, exc.reason
        else:
            if decided is not None:
                return decided
            approval = await approvals.get(approval_id) or approval    # somebody was first
            refused = core.problem(approval, decision, name, plan_hash=plan_hash) or (
                409, f"approval {approval.id} was decided meanwhile; nothing changed")
    status, reason = refused
    await audit.record(who, "approval.refused", "execution", approval.execution_id, {
        "approval_id": approval.id, "decision": decision, "channel": channel, "reason": reason,
        "plan_hash": plan_hash})
    log.warning("Approval %s: %s by %s refused: %s", approval.id, decision, who.label, reason)
    raise HTTPException(status, reason)


@slack_router.post("/approvals/slack", response_model=SlackReply,
                   responses={400: {"model": Message, "description": "Not a block_actions payload"},
                              401: {"model": Message,
                                    "description": "Missing, wrong or stale Slack signature"},
                              403: {"model": Message, "description": "The Slack user is not an approver"},
                              404: {"model": Message, "description": "Slack approvals are not configured, "
                                                                     "or no such approval"},
                              409: {"model": Message, "description": "Already decided, expired, or the "
                                                                     "plan changed"},
                              **UNAVAILABLE},
                   summary="Slack interactive buttons (signed by Slack; no token)",
                   openapi_extra={"security": [], "requestBody": {"required": True, "content": {
                       "application/x-www-form-urlencoded": {"schema": {
                           "type": "object", "properties": {"payload": {"type": "string"}},
                           "required": ["payload"]}}}}})
async def slack_action(request: Request, deps: Deps, approvals: ApprovalsDep, audit: AuditDep) -> Any:
    secret = deps.slack_signing_secret
    if not secret:
        raise HTTPException(404, "Slack approvals are not configured (approvals.slack.signing_secret)")
    body = await read_limited(request, MAX_SLACK_BODY)
    client = request.client.host if request.client else None
    bad = core.slack_signature_problem(secret, request.headers.get("x-slack-request-timestamp"), body,
                                       request.headers.get("x-slack-signature"))
    if bad is not None:
        log.warning("Slack approval request from %s refused: %s", client, bad)
        raise HTTPException(401, f"not a valid Slack request: {bad}")
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=20, strict_parsing=True)
        payload = loads(form["payload"][0].encode())
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, BadPayload):
        raise HTTPException(400, "the body must be a form with a JSON payload field") from None
    if _link_button(payload):
        # The notifications' "Open the execution" button is a link: Slack still tells the app
        # it was pressed, and wants a 200. There is nothing to decide.
        return {"text": "", "response_type": "ephemeral", "replace_original": False}
    action = core.slack_action(payload)
    if isinstance(action, str):
        raise HTTPException(400, action)
    name = deps.slack_users.get(action.user_id)
    slack_who = Principal("slack", name or action.user_id, Role.OPERATOR if name else None, client)
    if name is None:
        approval = await approvals.get(action.approval_id)
        await audit.record(slack_who, "approval.refused", "execution",
                           approval.execution_id if approval else None, {
                               "approval_id": action.approval_id, "decision": action.decision,
                               "channel": "slack", "reason": "Slack user not mapped to an approver"})
        raise HTTPException(403, f"Slack user {shown(action.user_id)} is not an approver "
                                 "(approvals.slack.users)")
    decided = await decide(approvals, audit, action.approval_id, action.decision, slack_who, name,
                           core.Channel.SLACK, f"Slack user {action.user_id}", action.plan_hash)
    verb = "Approved" if decided.status == core.ApprovalStatus.APPROVED else "Denied"
    return {"text": f"{verb} by {name}: {decided.action} on {decided.target.get('kind')}/"
                    f"{decided.target.get('namespace') or '-'}/{decided.target.get('name')} "
                    f"(execution {decided.execution_id})", "response_type": "in_channel",
            "replace_original": False}


def _link_button(payload: Any) -> bool:
    """A press of a notification's link button (steps.channels.slack_payload), not a decision."""
    actions = payload.get("actions") if isinstance(payload, dict) else None
    return (isinstance(payload, dict) and payload.get("type") == "block_actions" and isinstance(actions, list)
            and len(actions) == 1 and isinstance(actions[0], dict)
            and actions[0].get("action_id") == "open_execution")
