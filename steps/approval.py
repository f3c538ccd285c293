"""The approval gate of a remediation: plan, ask, wait, and go on only if a human approved.

:func:`obtain` is called by the remediation step after the policy let its request through
and before the rate limit, the lock and the send (see :mod:`engine.approvals` for the flow).
It returns None when no approval is needed, the approval's summary when the change was
approved (for this very plan), or a skipped :class:`StepResult` where no one can decide
(``aetherius run`` and ``replay`` have no approvers). A denial or an expiry raises
:class:`~engine.exceptions.NotApproved`, so the step takes its ``on_failure`` path.

The wait is durable: the approval is a record (``ctx.approvals``), the step run is recorded
as ``waiting_approval``, and a resumed run finds its approval again instead of asking twice
or sending the dry run again. The step's own timeout does not run while it waits; the
workflow's does (an approval expires before the workflow would time out).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from engine.approvals import Approval, ApprovalSpec, ApprovalStatus, requirement, slack_message
from engine.exceptions import NotApproved, StepError
from engine.policy import Verdict
from engine.statuses import StepStatus
from steps.agent import not_called
from steps.base import StepContext, StepResult
from steps.http import post_json

Sender = Callable[[StepContext, dict[str, Any]], Awaitable[dict[str, Any]]]
DEADLINE_MARGIN = 30.0    # seconds an expiry keeps before the workflow timeout, for on_failure steps


def plan_key(idempotency_key: str) -> str:
    """The dry run's own key: agent-manager must never answer the live change from it."""
    return f"{idempotency_key}:plan"


async def obtain(ctx: StepContext, spec: ApprovalSpec | None, request: dict[str, Any], verdict: Verdict,
                 send: Sender) -> dict[str, Any] | StepResult | None:
    need = requirement(spec, ctx.settings.approvals, action=verdict.action, namespace=verdict.namespace,
                       dry_run=bool(verdict.dry_run))
    if need is None:
        return None
    gate = ctx.approvals
    if gate is None:
        return StepResult(status=StepStatus.SKIPPED, output={
            "applied": False, "sent": False, "dry_run": request["dry_run"], "action": request["action"],
            "target": request["target"], "approval": {"required": True, "why": need.why},
            "reason": f"needs approval ({need.why}); only the service takes decisions, so nothing was sent"})
    approval = await gate.current(ctx.execution_id, ctx.run.seq)
    if approval is not None and approval.plan_hash != verdict.digest and approval.status in (
            ApprovalStatus.PENDING, ApprovalStatus.APPROVED):
        ctx.log.warning("The plan of %s changed since approval %s was asked for (%s -> %s): asking again",
                        ctx.step.id, approval.id, approval.plan_hash[:12], verdict.digest[:12])
        await gate.supersede(approval, verdict.digest)
        approval = None
    if approval is None:
        now = time.time()
        expires = now + need.timeout
        if ctx.deadline is not None:
            expires = min(expires, max(now + 1.0, ctx.deadline - DEADLINE_MARGIN))
        plan = await _plan(ctx, request, send)
        approval, new = await gate.open(Approval(
            id=f"appr-{uuid.uuid4().hex[:16]}", execution_id=ctx.execution_id, step_id=ctx.step.id,
            seq=ctx.run.seq, plan=plan, plan_hash=verdict.digest, action=verdict.action,
            target=dict(verdict.target), namespace=verdict.namespace, dry_run=bool(verdict.dry_run),
            approvers=need.approvers, on_timeout=need.on_timeout, requested_at=now, expires_at=expires,
            triggered_by=ctx.triggered_by, why=need.why))
        if new:
            await _announce(ctx, approval)
    if approval.status == ApprovalStatus.PENDING:
        if ctx.waiting is not None:
            await ctx.waiting(True)
        pause = ctx.paused() if ctx.paused is not None else contextlib.nullcontext()
        async with pause:
            approval = await gate.wait(approval)
        if ctx.waiting is not None:
            await ctx.waiting(False)
    if approval.status == ApprovalStatus.APPROVED:
        ctx.log.info("Approval %s: approved by %s via %s (plan %s)", approval.id, approval.decided_by,
                     approval.channel, approval.plan_hash[:12])
        return approval.summary()
    how = {ApprovalStatus.DENIED: f"denied by {approval.decided_by} via {approval.channel}",
           ApprovalStatus.EXPIRED: "expired without a decision (on_timeout: deny)",
           }.get(approval.status, str(approval.status))
    comment = f": {approval.comment}" if approval.comment else ""
    raise NotApproved(f"{request['action']} was not approved: approval {approval.id} {how}{comment}; "
                      "nothing was sent", output={
                          "applied": False, "sent": False, "dry_run": request["dry_run"],
                          "action": request["action"], "target": request["target"],
                          "approval": approval.summary()})


async def _plan(ctx: StepContext, request: dict[str, Any], send: Sender) -> dict[str, Any]:
    """The rendered request, and agent-manager's server-side dry run of it (what would change)."""
    reason = not_called(ctx)
    if reason is not None:
        return {"request": request, "dry_run_result": None, "note": reason}
    dry = {**request, "dry_run": True, "idempotency_key": plan_key(request["idempotency_key"])}
    answer = await send(ctx, dry)
    return {"request": request, "dry_run_result": {k: answer.get(k) for k in (
        "status", "exit_code", "stdout", "stderr", "duration_ms") if k in answer}}


async def _announce(ctx: StepContext, approval: Approval) -> None:
    """Tell the approvers: Slack with buttons if a webhook is configured; the log always."""
    message = slack_message(approval, ctx.settings.public_url)
    ctx.log.warning("%s", message["text"])
    url = ctx.settings.slack_webhook_url
    if not url or not ctx.settings.live:
        return
    try:
        await post_json(ctx.http, url, message, timeout=10.0, service="Slack", wait=ctx.paused)
    except StepError as exc:   # the approval stands; it is listed at /api/v1/approvals
        ctx.log.warning("Could not post approval %s to Slack: %s", approval.id, exc)
