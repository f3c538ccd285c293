"""What the HTTP API needs, and nothing more: :class:`ApiDeps`, handed to ``create_app``.

The service is the composition root above the API: it builds an ``ApiDeps`` from its parts
(``Service.api_deps``), so the API never sees the service itself. Each part is typed by a
Protocol defined here, which the service's parts happen to satisfy and a test's fakes can.
A part that is ``None`` is not built yet (the service is starting): a route that needs it
answers 503. Routes take the parts through ``Depends`` (:data:`QueriesDep`, ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request

from engine.approvals import Approval
from engine.auth import Principal, Role
from engine.metrics import Metrics
from engine.policy import Policy
from engine.rules.generation import Generation, ReloadStatus
from engine.rules.model import Workflow
from engine.runner import Started
from engine.storage.queries import Page, Queries

STARTING = "the service is starting"


class Rules(Protocol):
    """The active rules and their reloads (``engine.service.generations.RulesManager``)."""

    @property
    def generation(self) -> Generation | None: ...

    @property
    def status(self) -> ReloadStatus: ...

    @property
    def directory(self) -> Path: ...

    @property
    def policy(self) -> Policy:
        """What rules are checked against (engine.policy)."""
        ...

    async def workflow(self, workflow_id: str, version: int | None = None) -> Workflow | None: ...

    async def reload(self, reason: str) -> bool: ...


class Executions(Protocol):
    """Starts and cancels executions (the service: its runner, plus its own bookkeeping)."""

    async def start(self, workflow: Workflow, *, incident: dict[str, Any], events: list[dict[str, Any]],
                    context: dict[str, Any], triggered_by: str | None = None) -> Started:
        """Returns once the execution is recorded (running, or queued: then it has no task);
        its task ends with the final execution."""
        ...

    def cancel(self, execution_id: str) -> bool:
        """False if it is not running here."""
        ...

    async def cancel_anywhere(self, execution_id: str) -> bool:
        """Cancel it where it runs, if the engine can (Temporal); False otherwise."""
        ...

    async def cancel_queued(self, execution_id: str) -> bool:
        """Cancel a queued execution (any replica's); False if it is not queued."""
        ...

    def running(self) -> list[str]:
        """Ids of the executions running on this replica."""
        ...


class Verifier(Protocol):
    """Tokens to principals (``engine.storage.tokens.Tokens``)."""

    async def verify(self, token: str) -> Principal | None: ...


class SessionStore(Protocol):
    """The web console's sessions (``engine.storage.sessions.Sessions``)."""

    async def open(self, principal: Principal, token_digest: str) -> str: ...

    async def principal(self, session_id: str) -> Principal | None: ...

    async def close(self, session_id: str) -> None: ...


class TokenAdmin(Protocol):
    """Issuing, listing and revoking tokens (``engine.storage.tokens.Tokens``)."""

    async def issue(self, name: str, role: Role, by: Principal, expires_in: float | None = None,
                    token: str | None = None) -> tuple[str, dict[str, Any]] | None: ...

    async def list(self) -> list[dict[str, Any]]: ...

    async def revoke(self, name: str, by: Principal) -> bool: ...


class Audit(Protocol):
    """The audit trail (``engine.storage.audit.AuditLog``)."""

    async def record(self, who: Principal, action: str, target_kind: str | None = None,
                     target_id: str | None = None, detail: dict[str, Any] | None = None) -> None: ...

    async def page(self, *, actor: str | None = None, action: str | None = None,
                   target_kind: str | None = None, target_id: str | None = None,
                   since: datetime | None = None, until: datetime | None = None, limit: int = 50,
                   offset: int = 0, cursor: str | None = None) -> Page: ...


class ApprovalsApi(Protocol):
    """Approvals, read and decided (``engine.storage.approvals.Approvals``)."""

    async def get(self, approval_id: str) -> Approval | None: ...

    async def list(self, *, status: str | None = "pending", execution_id: str | None = None,
                   limit: int = 50) -> list[Approval]: ...

    async def decide(self, approval: Approval, decision: Any, who: Principal, channel: str,
                     comment: str | None, *, plan_hash: str | None = None) -> Approval | None:
        """None: somebody decided first (or it expired). May raise
        :class:`engine.approvals.DecisionRefused` (the engine's own check said no)."""
        ...


# (raw bytes or decoded JSON, subject, message id, headers), source -> counts: accepted,
# duplicates, dead_letters, ignored. The intake behind NATS and HTTP alike.
IngestItem = tuple[Any, str | None, str | None, dict]
Ingest = Callable[[list[IngestItem], str], Awaitable[dict[str, int]]]
# What /readyz shows: at least ready (bool), checks ({name: ok|down|degraded}), reasons.
Readiness = Callable[[], Awaitable[dict[str, Any]]]
# The generation last published to Redis by any replica (None without Redis).
CachedGeneration = Callable[[], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, kw_only=True)
class ApiDeps:
    queries: Queries | None
    rules: Rules | None
    executions: Executions | None
    ingest: Ingest | None
    readiness: Readiness
    cached_generation: CachedGeneration
    metrics: Metrics
    auth: Verifier
    tokens: TokenAdmin | None
    audit: Audit | None
    max_event_bytes: int = 256 * 1024              # one event (an NDJSON line)
    max_request_bytes: int = 4 * 1024 * 1024       # one POST /events body
    max_events_per_request: int = 1000             # array items or NDJSON lines
    dead_letter_bytes: int = 64 * 1024             # what a dead letter keeps of an over-long line
    concurrent_event_requests: int = 2             # POST /events bodies read at once
    replica: str = ""
    metrics_public: bool = True         # /metrics without a token
    allowed_origins: frozenset[str] = frozenset()   # browser origins allowed to write
    # Roles whose manual execute may set what reaches agent-manager (policy.override_roles).
    override_roles: frozenset[Role] = frozenset({Role.ADMIN})
    approvals: ApprovalsApi | None = None
    # Slack interactive buttons: the signing secret, and Slack user id -> approver name.
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_users: Mapping[str, str] = field(default_factory=dict)
    # The web console's sessions (engine.ui); None: no console logins (API tokens only).
    sessions: SessionStore | None = None


def api_deps(request: Request) -> ApiDeps:
    deps: ApiDeps = request.app.state.deps
    return deps


Deps = Annotated[ApiDeps, Depends(api_deps)]


def _part(name: str) -> Callable[[ApiDeps], Any]:
    """A dependency giving the part ``name`` of the deps, or 503 while it is not built."""

    def part(deps: Deps) -> Any:
        value = getattr(deps, name)
        if value is None:
            raise HTTPException(503, STARTING)
        return value

    part.__name__ = f"_{name}"
    return part


QueriesDep = Annotated[Queries, Depends(_part("queries"))]
RulesDep = Annotated[Rules, Depends(_part("rules"))]
ExecutionsDep = Annotated[Executions, Depends(_part("executions"))]
IngestDep = Annotated[Ingest, Depends(_part("ingest"))]
TokensDep = Annotated[TokenAdmin, Depends(_part("tokens"))]
AuditDep = Annotated[Audit, Depends(_part("audit"))]
ApprovalsDep = Annotated[ApprovalsApi, Depends(_part("approvals"))]
