"""The API's request and response models, and the error responses its routes declare.

The rule-file formats themselves (:class:`engine.rules.model.Workflow` and ``Strategy``)
are added to the OpenAPI components by :mod:`engine.api.openapi`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

PREFIX = "/api/v1"   # every route but the operational ones (/metrics, /healthz, /readyz)
CURSOR = "next_cursor of the previous page (offset is then ignored)"
MAX_OFFSET = 100_000   # deeper pages are read with the cursor
MAX_LIMIT = 500


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _iso(value: Any) -> Any:
    """Pydantic would read a number as seconds since 1970; the API documents ISO 8601 only."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("expected an ISO 8601 time such as 2026-12-01T10:00:00Z")
    return value


def _utc(value: datetime) -> datetime:
    """A query time in UTC (UTC if it has no zone), within what PostgreSQL and Python hold."""
    try:
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range: expected a time from year 1 to 9999 (UTC)") from None


Moment = Annotated[datetime, BeforeValidator(_iso), AfterValidator(_utc)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"items to skip (at most {MAX_OFFSET}; "
                                                                "use the cursor to go further)")]
ExecutionStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
Responses = dict[int | str, dict[str, Any]]


class Message(BaseModel):
    detail: str = Field(description="what went wrong")


class RuleErrorItem(BaseModel):
    loc: list[str | int] = Field(description="path of the offending field inside the posted document "
                                             "(empty: the document as a whole, or another rule)")
    msg: str
    type: str = Field(description="rule_error: this document; rule_conflict: it breaks another rule")


class RuleErrors(BaseModel):
    detail: list[RuleErrorItem]


class ReloadResult(BaseModel):
    ok: bool = Field(description="false: the rules are invalid and the previous generation stays active")
    generation: int = Field(description="the active rule generation after the reload")
    problems: list[str] = Field(default_factory=list, description="path:line: message")


class WorkflowSummary(BaseModel):
    id: str
    name: str
    description: str = ""
    status: str
    trigger_type: str
    priority: int
    version: int = Field(description="bumped by the database on every change")
    source: str = Field(description="file (rules/), api, or sql")
    created_at: datetime
    updated_at: datetime
    active: bool = Field(description="part of the active rule generation on this replica")
    active_version: int | None = Field(description="the version the active generation runs")


class WorkflowRecord(WorkflowSummary):
    trigger_config: dict[str, Any]
    timeout: str | None
    steps: list[Any]
    definition: dict[str, Any] = Field(description="the workflow spec, as in a rule file")
    reload: ReloadResult | None = Field(default=None, description="outcome of the reload after a write")


class WorkflowList(BaseModel):
    items: list[WorkflowSummary]


class StrategySummary(BaseModel):
    id: str
    name: str
    category: str
    workflow_id: str | None
    priority: int
    enabled: bool
    version: int
    source: str
    created_at: datetime
    updated_at: datetime
    active: bool = Field(description="part of the active rule generation on this replica")


class StrategyRecord(StrategySummary):
    symptoms: list[Any]
    definition: dict[str, Any] = Field(description="the strategy spec, as in a rule file")
    reload: ReloadResult | None = Field(default=None, description="outcome of the reload after a write")


class StrategyList(BaseModel):
    items: list[StrategySummary]


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: Any = Field(default=None, description="one event in any shape the intake accepts; the "
                                                 "incident context is built from it")
    incident: dict[str, Any] | None = Field(default=None, description=(
        "incident fields (override those taken from the event); those that would reach agent-manager "
        "need a role in policy.override_roles and must be Kubernetes names"))
    context: dict[str, Any] | None = Field(default=None, description="extra variables, read as 'context'")


class ExecuteAccepted(BaseModel):
    execution_id: str
    status: str = Field("running", description="'running', or 'queued': executions.max_running run "
                                               "already, it starts when a slot is free (first in, first out)")
    workflow_id: str
    workflow_version: int
    dry_run: bool
    href: str


class ExecutionSummary(BaseModel):
    id: str
    workflow_id: str
    workflow_version: int
    incident_id: str | None
    status: str
    outcome: str | None = Field(default=None, description="what it did to the cluster: remediated, dry_run, "
                                "waiting_approval, needs_human, failed, no_action (null while it runs, "
                                "unless it waits for an approval)")
    dry_run: bool
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    owner: str | None = Field(description="the replica running it (or that queued it)")
    arm: str | None = Field(default=None, description="the experiment arm of the incident it runs for "
                                                      "(null: no experiment, or started by hand)")
    queued_at: datetime | None = Field(default=None, description="when it was admitted; it waited "
                                       "(status 'queued') until started_at")


class StepRunRecord(BaseModel):
    seq: int
    step_id: str
    step_type: str
    status: str
    attempts: int
    output: Any
    error: str | None
    error_kind: str | None
    parent: int | None = Field(description="seq of the run that scheduled this one")
    in_branch_of: int | None = Field(description="seq of the parallel run this ran inside")
    branch: list[Any] = Field(description="the step ids it scheduled next")
    started_at: datetime | None
    attempt_started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None


class ExecutionApproval(BaseModel):
    id: str
    step_id: str
    seq: int
    status: str = Field(description="pending, approved, denied, expired, superseded, cancelled")
    plan_hash: str
    action: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    channel: str | None
    comment: str | None


class ExecutionDetail(ExecutionSummary):
    context: dict[str, Any] = Field(description="incident, events and vars the execution started with")
    steps: list[StepRunRecord] = Field(description="step runs, ordered by seq")
    approvals: list[ExecutionApproval] = Field(default_factory=list,
                                               description="approvals asked for (/api/v1/approvals/{id})")
    running_here: bool = Field(description="running on this replica (so it can be cancelled here)")


class ExecutionPage(BaseModel):
    items: list[ExecutionSummary]
    limit: int
    offset: int
    next_cursor: str | None = Field(description="pass as 'cursor' for the next page; null on the last")


class CancelResult(BaseModel):
    execution_id: str
    status: str = Field(description="'cancelled', or 'cancelling' if it had not stopped yet")


class IncidentSummary(BaseModel):
    id: str
    strategy_id: str
    key: str
    status: str
    severity: str | None
    workflow_id: str | None
    execution_id: str | None
    execution_status: str | None = Field(default=None, description="its execution's status ('queued' "
                                         "while it waits for a free slot)")
    namespace: str | None
    workload: str | None
    node: str | None
    reason: str | None
    events: int
    late: int
    suppressed: int
    inhibited: dict[str, Any]
    first_seen: datetime | None
    last_seen: datetime | None
    opened_at: datetime
    closed_at: datetime | None
    cooldown_until: datetime | None
    arm: str | None = Field(default=None, description="the experiment arm it was assigned (its workflow_id "
                                                      "is the arm's workflow); null: no experiment")


class IncidentDetail(IncidentSummary):
    context: dict[str, Any]
    event_states: dict[str, int] = Field(description="recorded events of the incident, counted by state")


class IncidentPage(BaseModel):
    items: list[IncidentSummary]
    limit: int
    offset: int
    next_cursor: str | None


class IngestResult(BaseModel):
    received: int = Field(description="entries in the request")
    accepted: int = Field(description="new events recorded and processed")
    duplicates: int
    dead_letters: int = Field(description="entries that could not be read, recorded as dead letters")
    ignored: int = Field(description="watch lines that carry no event (BOOKMARK, DELETED)")


class BadBody(BaseModel):
    detail: str
    dead_letters: int = 0


class RulesStatus(BaseModel):
    ok: bool
    generation: int
    reason: str
    last_attempt: float
    last_success: float
    reloads: int
    failures: int
    problems: list[str] = Field(description="path:line: message, of the last reload if it failed")
    warnings: list[str] = Field(description="stored rules left out of the active generation, and why")
    digest: str | None = Field(description="digest of the active generation")
    strategies: int | None = Field(description="strategies in the active generation (implicit included)")
    workflows: int | None
    files: int | None = Field(description="rule files read")
    loaded_at: float | None
    cached_generation: dict[str, Any] | None = Field(
        description="the generation last published to Redis by any replica (null without Redis)")


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    model_config = ConfigDict(extra="allow")
    ready: bool
    checks: dict[str, str] | None = Field(default=None, description="postgres, nats, redis (with a token)")
    reasons: list[str] | None = Field(default=None, description="why it is not ready (with a token)")


NOT_FOUND: Responses = {404: {"model": Message, "description": "No such id"}}
CONFLICT: Responses = {409: {"model": Message, "description": "Conflict (for rules: defined in a rule file)"}}
INVALID: Responses = {422: {"model": RuleErrors, "description": "Invalid: every problem, with its location"}}
BAD_JSON: Responses = {400: {"model": Message, "description": "The body is not JSON, or out of bounds (a NUL "
                                                              "character, an integer past 64 bits, nested "
                                                              "deeper than 64)"},
                       413: {"model": Message, "description": "The body is too large"}}
UNAVAILABLE: Responses = {503: {"model": Message, "description": "The service is not started"}}


ApprovalState = Literal["pending", "approved", "denied", "expired", "superseded", "cancelled"]


class ApprovalView(BaseModel):
    """A request for a human decision on one remediation's plan (engine.approvals)."""

    id: str
    execution_id: str
    step_id: str
    seq: int
    status: ApprovalState
    action: str
    target: dict[str, Any]
    namespace: str | None
    dry_run: bool = Field(description="whether the change to approve is itself a dry run")
    plan_hash: str = Field(description="SHA-256 of the exact request that will be sent; pass it back "
                                       "when deciding to make sure you approve what you read")
    plan: dict[str, Any] = Field(description="request: what will be sent; dry_run_result: agent-manager's "
                                             "server-side dry run of it (stdout: what would change)")
    why: str = Field(description="which policy rule, or the step, asks for approval")
    approvers: list[str] = Field(description="who may decide (empty: anyone whose role may approve)")
    on_timeout: Literal["deny", "approve"]
    triggered_by: str | None = Field(description="who started the execution by hand (may not decide)")
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    channel: str | None = Field(description="api, slack or timeout")
    comment: str | None


class ApprovalList(BaseModel):
    items: list[ApprovalView]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(None, max_length=2000, description="why; kept on the audit trail")
    plan_hash: str | None = Field(None, max_length=64, pattern=r"^[0-9a-f]{1,64}$",
                                  description="the plan_hash you read: the decision is refused if the "
                                              "plan changed since")


class SlackReply(BaseModel):
    text: str
    response_type: str = "ephemeral"
    replace_original: bool = False


# ----------------------------------------------------------------------------- versions

VersionChange = Literal["create", "replace", "delete", "restore"]


class RuleVersionSummary(BaseModel):
    version: int
    change: VersionChange = Field(description="what made it: create, replace, delete (the row as it was "
                                              "deleted), or restore (of restored_from)")
    digest: str | None = Field(description="SHA-256 of the stored row (the audit trail's before/after)")
    source: str | None = Field(description="file (rules/), api, or sql")
    author: str = Field(description="token:<name>, file:<path>, sql:<database user>, cli:<user>, system:..., "
                                    "or unknown (kept before versions had authors)")
    author_role: str | None
    restored_from: int | None = Field(description="the version a restore brought back")
    created_at: datetime
    current: bool = Field(description="the rule's version now")


class RuleVersionList(BaseModel):
    id: str
    kind: Literal["workflow", "strategy"]
    current_version: int | None = Field(description="null: the rule is deleted (its versions are kept)")
    source: str | None = Field(description="the rule's source now (a file rule is restored by editing "
                                           "rules/)")
    items: list[RuleVersionSummary] = Field(description="oldest first")


class RuleVersionDetail(RuleVersionSummary):
    id: str
    kind: Literal["workflow", "strategy"]
    content: dict[str, Any] = Field(description="the spec of this version, as in a rule file")
    yaml: str = Field(description="the content as YAML, in rule-file key order")


class RuleVersionDiff(BaseModel):
    id: str
    kind: Literal["workflow", "strategy"]
    from_version: int | None = Field(description="null: the diff is from nothing (version 1)")
    to_version: int
    from_digest: str | None
    to_digest: str | None
    identical: bool = Field(description="the two contents are the same")
    diff: str = Field(description="unified diff of the YAML of from_version to to_version")


# ----------------------------------------------------------------------------- experiments


class OpenToClose(BaseModel):
    count: int = Field(description="closed incidents measured")
    mean: float | None
    p50: float | None
    p90: float | None
    max: float | None


class ArmReport(BaseModel):
    arm: str
    workflow_id: str | None
    weight: float | None = Field(description="its weight now (null: no longer an arm)")
    share: float | None = Field(description="its share of the weights now, 0..1")
    incidents: int = Field(description="incidents assigned to it")
    observed_share: float | None = Field(description="its share of the experiment's incidents, 0..1")
    open: int = Field(description="incidents still open")
    executions: int
    outcomes: dict[str, int] = Field(description="executions by outcome: remediated, dry_run, "
                                                 "waiting_approval, needs_human, failed, no_action, running")
    open_to_close_seconds: OpenToClose | None = Field(description="from an incident's opening to its close")
    refired: int = Field(description="incidents that fired again within their cooldown")
    suppressed_events: int = Field(description="events suppressed by those cooldowns")
    late_events: int = Field(description="events that arrived while the incidents were open")


class ExperimentReport(BaseModel):
    strategy_id: str
    active: bool = Field(description="the active rules run an experiment for this strategy")
    key: list[str] | None = Field(description="the event fields arms are assigned by")
    incidents: int
    since: datetime | None
    arms: list[ArmReport] = Field(description="the configured arms, then arms no longer configured")
