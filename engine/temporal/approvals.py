"""Approvals on Temporal: the workflow waits for an ``approve`` or ``deny`` update.

A remediation that needs a human runs in the step activity up to the point where the
builtin runner would wait on our approvals table: the plan is made, the approval recorded
(``approvals``, as always) and announced. There :class:`ActivityGate` ends the activity
instead of waiting, handing the approval to the workflow, which then waits durably for an
update (or until the approval expires: a Temporal timer). The update's validator checks the
decider's role (it must grant ``approve``), the plan hash, the expiry, the approvers and the
four-eyes rule (:func:`engine.approvals.problem`) against the approval the run holds: a
refused update leaves no trace in the run's history. An accepted one records the decision
in our approvals table (an activity: the first decision wins there, whoever took it); the
step then runs again and finds its approval decided, as a resumed builtin step does.

:class:`TemporalDecisions` is what the API and the Slack buttons decide through when the
service runs on Temporal: it sends the update to the execution's run.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from engine.approvals import Approval, ApprovalStatus, DecisionRefused, Gate
from engine.auth import Principal
from engine.temporal.codec import approval_from_dict, approval_to_dict

log = logging.getLogger(__name__)

UPDATES = ("approve", "deny")


class AwaitDecision(Exception):
    """Raised in the step activity where the step would wait for a human: the workflow waits."""

    def __init__(self, approval: Approval) -> None:
        super().__init__(f"approval {approval.id} waits for a decision")
        self.approval = approval


class ActivityGate:
    """The approvals table as steps see it in an activity, but a wait for a pending,
    unexpired approval hands it to the workflow (:class:`AwaitDecision`)."""

    def __init__(self, inner: Gate, now: Any) -> None:
        self.inner = inner
        self.now = now

    async def current(self, execution_id: str, seq: int) -> Approval | None:
        return await self.inner.current(execution_id, seq)

    async def open(self, approval: Approval) -> tuple[Approval, bool]:
        return await self.inner.open(approval)

    async def supersede(self, approval: Approval, plan_hash: str) -> None:
        await self.inner.supersede(approval, plan_hash)

    async def wait(self, approval: Approval) -> Approval:
        if approval.status == ApprovalStatus.PENDING and self.now() < approval.expires_at:
            raise AwaitDecision(approval)
        return await self.inner.wait(approval)     # expired: the table's on_timeout, first decision wins


def decision_args(approval: Approval, decision: str, who: Principal, channel: str, comment: str | None,
                  plan_hash: str | None) -> dict[str, Any]:
    return {"approval_id": approval.id, "decision": decision, "plan_hash": plan_hash, "channel": channel,
            "comment": comment, "who": {"kind": who.kind, "name": who.name,
                                        "role": str(who.role) if who.role else None, "client": who.client}}


class TemporalDecisions:
    """The approvals API's store (get, list, decide), deciding through the run's update."""

    def __init__(self, approvals: Any, client: Client) -> None:
        self.approvals = approvals
        self.client = client

    async def get(self, approval_id: str) -> Approval | None:
        found: Approval | None = await self.approvals.get(approval_id)
        return found

    async def list(self, *, status: str | None = "pending", execution_id: str | None = None,
                   limit: int = 50) -> list[Approval]:
        found: list[Approval] = await self.approvals.list(status=status, execution_id=execution_id,
                                                          limit=limit)
        return found

    async def decide(self, approval: Approval, decision: Literal["approve", "deny"], who: Principal,
                     channel: str, comment: str | None, *, plan_hash: str | None = None) -> Approval | None:
        handle = self.client.get_workflow_handle(approval.execution_id)
        args = decision_args(approval, decision, who, channel, comment, plan_hash)
        try:
            result = await handle.execute_update(decision, args)
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError):
                status = int(cause.type) if cause.type and cause.type.isdigit() else 409
                raise DecisionRefused(status, cause.message) from None
            raise
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            # No run of that id (an execution from before the switch to Temporal): the table.
            log.info("Approval %s: execution %s has no Temporal run; deciding in the table",
                     approval.id, approval.execution_id)
            found: Approval | None = await self.approvals.decide(approval, decision, who, channel, comment)
            return found
        decided = result.get("approval") if isinstance(result, dict) else None
        return approval_from_dict(decided) if decided else None


__all__ = ["UPDATES", "ActivityGate", "AwaitDecision", "TemporalDecisions", "approval_to_dict",
           "decision_args"]
