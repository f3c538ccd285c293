"""Approvals: which changes need a human, what exactly a human approves, and who may decide.

A remediation that needs approval (the service's ``approvals.required`` rules, or the step's
own ``approval:`` block) does not go straight to agent-manager:

1. it obtains the **plan**: the rendered request it would send, and agent-manager's
   server-side dry run of it (what would change); the **plan hash** is the SHA-256 of the
   request (:func:`engine.policy.request_digest`, the policy verdict's digest);
2. it **waits** durably (the approval is a row in PostgreSQL; the step run shows
   ``waiting_approval``; a restart or another replica resumes the wait);
3. the first **decision** wins (approve or deny, through the API or a signed Slack
   action); a replayed or late one changes nothing. Past its expiry the approval follows
   ``on_timeout`` (``deny`` unless both the service and the step say ``approve``);
4. an approval is bound to its plan hash: if the request the step would send changes (a
   rule reload, a changed cap), the old approval is superseded and a new one is asked for.

A rule file can ask for approval and narrow who gives it, never waive what the service
config requires. This module is the pure part (rules, specs, the checks on a decision, the
Slack signature); the durable record is :mod:`engine.storage.approvals`, the wait is in
:mod:`steps.approval`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from engine.durations import Duration

OnTimeout = Literal["deny", "approve"]
SLACK_TOLERANCE = 300.0      # seconds a Slack request timestamp may be away from now
DEFAULT_TIMEOUT = 1800.0


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"          # past its expiry with on_timeout deny
    SUPERSEDED = "superseded"    # the plan changed before it ran: a new approval was asked for
    CANCELLED = "cancelled"      # its execution ended (cancelled, timed out) while it waited


DECIDED = frozenset({ApprovalStatus.APPROVED, ApprovalStatus.DENIED, ApprovalStatus.EXPIRED})


class Channel(StrEnum):
    API = "api"
    CONSOLE = "console"     # the web console's Approve / Deny buttons (engine.ui)
    SLACK = "slack"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class ApprovalRule:
    """One of the service's ``approvals.required`` rules: which changes need a human."""

    actions: frozenset[str] = frozenset()       # empty: every action
    namespaces: frozenset[str] = frozenset()    # empty: every namespace (and cluster-wide objects)
    dry_run: bool | None = False                # False: live changes; True: dry runs; None: both

    def matches(self, action: str, namespace: str | None, dry_run: bool) -> bool:
        return ((not self.actions or action in self.actions)
                and (not self.namespaces or namespace in self.namespaces)
                and (self.dry_run is None or self.dry_run == dry_run))

    def describe(self) -> str:
        parts = [",".join(sorted(self.actions)) or "any action",
                 "in " + ",".join(sorted(self.namespaces)) if self.namespaces else "in any namespace",
                 {False: "live", True: "dry-run", None: "live or dry-run"}[self.dry_run]]
        return " ".join(parts)


@dataclass(frozen=True)
class ApprovalDefaults:
    """What the service config says of approvals (``approvals``), as steps read it."""

    rules: tuple[ApprovalRule, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    on_timeout: OnTimeout = "deny"
    approvers: frozenset[str] = frozenset()     # empty: anyone whose role may approve
    poll: float = 1.0                           # seconds between looks at the record


class ApprovalSpec(BaseModel):
    """A step's ``approval:`` block (in a remediation's ``config``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: bool = True
    approvers: tuple[str, ...] = ()      # narrows the service's approvers; never widens them
    timeout: Duration | None = None
    on_timeout: OnTimeout | None = None


@dataclass(frozen=True)
class Requirement:
    """This change needs a human: who may decide, until when, and what a timeout does."""

    approvers: frozenset[str]
    timeout: float
    on_timeout: OnTimeout
    why: str


def requirement(spec: ApprovalSpec | None, defaults: ApprovalDefaults, *, action: str,
                namespace: str | None, dry_run: bool) -> Requirement | None:
    """Whether a change needs approval, and on what terms (None: it does not)."""
    rule = next((r for r in defaults.rules if r.matches(action, namespace, dry_run)), None)
    asked = spec is not None and spec.required
    if rule is None and not asked:
        return None
    why = f"approvals.required: {rule.describe()}" if rule is not None else "the step asks for approval"
    approvers = defaults.approvers
    if spec is not None and spec.approvers:
        narrowed = frozenset(spec.approvers)
        approvers = approvers & narrowed if approvers else narrowed
        if not approvers:
            # The step names none of the service's approvers: nobody could decide. Keep the
            # service's list rather than make the change impossible to approve silently.
            approvers = defaults.approvers
    timeout = spec.timeout if spec is not None and spec.timeout is not None else defaults.timeout
    step_says = spec.on_timeout if spec is not None else None
    on_timeout: OnTimeout = "deny" if "deny" in (step_says, defaults.on_timeout) else "approve"
    return Requirement(approvers, timeout, on_timeout, why)


# ----------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Approval:
    """One request for a human decision on one step run's plan."""

    id: str
    execution_id: str
    step_id: str
    seq: int
    plan: Mapping[str, Any]          # {"request": ..., "dry_run_result": ..., "summary": ...}
    plan_hash: str
    action: str
    target: Mapping[str, Any]
    namespace: str | None
    dry_run: bool
    approvers: frozenset[str]
    on_timeout: OnTimeout
    requested_at: float
    expires_at: float
    triggered_by: str | None = None   # the principal that started the execution by hand
    status: ApprovalStatus = ApprovalStatus.PENDING
    decided_at: float | None = None
    decided_by: str | None = None
    channel: str | None = None
    comment: str | None = None
    why: str = ""

    def decided(self, status: ApprovalStatus, by: str, channel: str, comment: str | None,
                at: float | None = None) -> Approval:
        return replace(self, status=status, decided_by=by, channel=channel, comment=comment,
                       decided_at=time.time() if at is None else at)

    def summary(self) -> dict[str, Any]:
        """What a step's output and a notification say of it."""
        return {"id": self.id, "status": str(self.status), "plan_hash": self.plan_hash,
                "decided_by": self.decided_by, "channel": self.channel, "comment": self.comment,
                "requested_at": self.requested_at, "decided_at": self.decided_at,
                "expires_at": self.expires_at}


def problem(approval: Approval, decision: Literal["approve", "deny"], who: str, *,
            plan_hash: str | None = None, now: float | None = None) -> tuple[int, str] | None:
    """Why ``who`` may not take this decision now (an HTTP status and a sentence), or None.

    ``who`` is the approver's name: a token's name, or the name a Slack user is mapped to."""
    now = time.time() if now is None else now
    if approval.status != ApprovalStatus.PENDING:
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        return 409, f"approval {approval.id} is already {approval.status}{by}; nothing changed"
    if now >= approval.expires_at:
        return 409, f"approval {approval.id} expired; nothing changed"
    if plan_hash is not None and not hmac.compare_digest(plan_hash, approval.plan_hash):
        return 409, (f"the plan changed: approval {approval.id} is for plan {approval.plan_hash[:12]}, "
                     f"not {plan_hash[:12]}; read it again")
    if approval.approvers and who not in approval.approvers:
        listed = ", ".join(sorted(approval.approvers))
        return 403, f"{who} is not an approver of this change (approvers: {listed})"
    if approval.triggered_by is not None and who == approval.triggered_by:
        # Four eyes: whoever started it by hand has a say already (and may cancel it).
        return 403, f"{who} started this execution by hand and may not decide on its change"
    return None


class DecisionRefused(Exception):
    """A decision the engine refused (Temporal's update validator): an HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Gate(Protocol):
    """Where approvals are kept (:class:`engine.storage.approvals.Approvals`; in memory for tests)."""

    async def current(self, execution_id: str, seq: int) -> Approval | None:
        """The step run's latest approval that is not superseded."""
        ...

    async def open(self, approval: Approval) -> tuple[Approval, bool]:
        """Record a new pending approval; if one for the same run and plan exists, that one.
        Returns it and whether it is new."""
        ...

    async def supersede(self, approval: Approval, plan_hash: str) -> None:
        """The plan changed: this approval no longer applies."""
        ...

    async def wait(self, approval: Approval) -> Approval:
        """Until it is decided; past its expiry, follows ``on_timeout`` (the first decision wins)."""
        ...


# ----------------------------------------------------------------------------- Slack


def slack_signature_problem(secret: str, timestamp: str | None, body: bytes, signature: str | None,
                            *, now: float | None = None, tolerance: float = SLACK_TOLERANCE) -> str | None:
    """Why this is not a genuine, fresh Slack request (None: it is).

    Slack signs ``v0:{X-Slack-Request-Timestamp}:{raw body}`` with HMAC-SHA256 and the app's
    signing secret, and sends ``v0=<hex>`` as ``X-Slack-Signature``."""
    if not timestamp or not signature:
        return "missing X-Slack-Request-Timestamp or X-Slack-Signature"
    try:
        sent = int(timestamp)
    except ValueError:
        return "X-Slack-Request-Timestamp is not a Unix time"
    now = time.time() if now is None else now
    if abs(now - sent) > tolerance:
        return f"the request timestamp is more than {tolerance:.0f} s away from now (replayed or stale)"
    if not hmac.compare_digest(slack_sign(secret, timestamp, body).encode(), signature.encode()):
        return "the signature does not match"
    return None


def slack_sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Slack-Signature`` Slack would send (for tests and stand-ins)."""
    return "v0=" + hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SlackAction:
    user_id: str
    user_name: str | None
    decision: Literal["approve", "deny"]
    approval_id: str
    plan_hash: str | None
    response_url: str | None = None


def slack_action(payload: Any) -> SlackAction | str:
    """The decision in a Slack ``block_actions`` payload, or why there is none."""
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return "not a block_actions payload"
    user = payload.get("user")
    actions = payload.get("actions")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        return "the payload names no user"
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        return "the payload carries no action"
    action = actions[0]
    decision = action.get("action_id")
    if decision not in ("approve", "deny"):
        return f"unknown action {str(decision)[:40]!r}"
    value = action.get("value")
    if not isinstance(value, str) or not value:
        return "the action carries no approval id"
    approval_id, _, plan_hash = value.partition(":")
    response_url = payload.get("response_url")
    return SlackAction(user["id"], user.get("username") or user.get("name"), decision, approval_id,
                       plan_hash or None, response_url if isinstance(response_url, str) else None)


def slack_message(approval: Approval, base_url: str) -> dict[str, Any]:
    """The Slack message that asks for a decision: the plan, and Approve / Deny buttons."""
    target = approval.target
    where = f"{target.get('kind')}/{target.get('namespace') or '-'}/{target.get('name')}"
    link = f"{base_url.rstrip('/')}/api/v1/approvals/{approval.id}"
    result = approval.plan.get("dry_run_result")
    shown = result.get("stdout") if isinstance(result, dict) else None
    diff = (str(shown)[:2500] if shown else str(approval.plan.get("note") or "no server-side dry run"))
    mode = "a dry run" if approval.dry_run else "a LIVE change"
    approvers = ", ".join(sorted(approval.approvers)) or "any operator"
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(approval.expires_at))
    text = (f"Approval needed: {approval.action} on {where} ({mode}), execution {approval.execution_id}, "
            f"step {approval.step_id}. Approve: POST {link}/approve; deny: POST {link}/deny")
    value = f"{approval.id}:{approval.plan_hash}"
    return {"text": text, "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": (
            f"*Approval needed*: `{approval.action}` on `{where}` ({mode})\n"
            f"Execution `{approval.execution_id}`, step `{approval.step_id}`; why: {approval.why}")}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"What would change:\n```{diff}```"}},
        {"type": "actions", "block_id": f"approval:{approval.id}", "elements": [
            {"type": "button", "action_id": "approve", "style": "primary", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": "deny", "style": "danger", "value": value,
             "text": {"type": "plain_text", "text": "Deny"}}]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": (
            f"Plan `{approval.plan_hash[:12]}` · approvers: {approvers} · expires {expires} "
            f"(then: {approval.on_timeout}) · <{link}|details>")}]},
    ]}

