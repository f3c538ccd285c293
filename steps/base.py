"""The contract every step type fulfils.

A step type is one class: a name, a pydantic ``Config`` model validated when rules load,
and ``async run(ctx, config) -> StepResult``. Its class methods tell ``aetherius check``
which steps or expressions its config refers to. The engine looks the type up in the
registry (:mod:`steps`); it never branches on the type name. Each step module owns its
outside calls (agent-manager, reasoning-service, Slack) and translates their errors
into :mod:`engine.exceptions` at that boundary.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from engine.approvals import ApprovalDefaults, Gate
from engine.exceptions import ExpressionError, StepError
from engine.policy import ACTIONS, PROTECTED_NAMESPACES, Policy, Refusal
from engine.statuses import StepStatus
from engine.templates import render
from steps.channels import DEFAULT_PAGERDUTY_SEVERITIES, EmailSettings, Route
from steps.http import HttpClient, Pause
from steps.mail import Mailer

if TYPE_CHECKING:
    from engine.rules.model import StepSpec, Workflow
    from engine.store import StepRun


class StepConfig(BaseModel):
    """Base of every step's ``config:`` block. Unknown keys are errors, not surprises."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Settings:
    """What steps read from the service configuration (never from rule files).

    Built by :meth:`engine.config.Config.step_settings`. The defaults here are those of an
    empty configuration (a test keeps them equal), for tests and embedders that build one
    by hand. Secrets are plain text here, so they are kept out of the repr."""

    agent_manager_url: str | None = None
    reasoning_service_url: str | None = None
    ai_timeout: float = 30.0
    ai_max_retries: int = 3
    slack_webhook_url: str | None = field(default=None, repr=False)
    webhooks: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The other channels (steps.channels). Secrets are kept out of the repr.
    teams_webhook_url: str | None = field(default=None, repr=False)
    pagerduty_routing_key: str | None = field(default=None, repr=False)
    pagerduty_url: str = "https://events.pagerduty.com"
    pagerduty_severities: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_PAGERDUTY_SEVERITIES))
    pagerduty_resolve_on: frozenset[str] = frozenset({"remediated"})
    email: EmailSettings = field(default_factory=EmailSettings)
    # ``channel: route``: the routes (by severity, namespace, strategy) and where the rest go.
    routes: tuple[Route, ...] = ()
    default_channels: tuple[str, ...] = ("slack",)
    command_timeout: float = 30.0
    cluster: str | None = None
    # Remediation safety: dry-run unless this is False AND the workflow does not ask for it.
    dry_run: bool = True
    allowed_actions: frozenset[str] = ACTIONS
    max_memory_factor: float = 2.0
    max_memory_mib: int = 16384
    max_replicas: int = 50
    # The policy every agent-manager request passes (engine.policy): what config decides of it.
    allow_secrets: bool = False
    protected_namespaces: frozenset[str] = PROTECTED_NAMESPACES
    public_url: str = "http://localhost:8081"
    # Which changes need a human's approval, and on what terms (engine.approvals).
    approvals: ApprovalDefaults = field(default_factory=ApprovalDefaults)
    # live=False (replay, ``run`` without --live): steps that would call out answer dry-run.
    live: bool = True
    # virtual_time=True (replay, dry-run ``run``): waits return at once instead of sleeping.
    virtual_time: bool = False

    @property
    def policy(self) -> Policy:
        return Policy(allowed_actions=self.allowed_actions, allow_secrets=self.allow_secrets,
                      protected_namespaces=self.protected_namespaces)


@dataclass
class StepResult:
    """What a step hands back to the runner.

    ``next`` overrides the step's ``on_success`` (a decision jumping to a step);
    ``context`` adds names later expressions read (``analysis``, ``decision``).
    """

    output: Any = None
    status: str = StepStatus.SUCCEEDED    # or SKIPPED: nothing to do, the path goes on
    next: list[str] | None = None
    context: dict[str, Any] = field(default_factory=dict)


StepAudit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class StepContext:
    """Everything a step may use while it runs."""

    execution_id: str
    workflow: Workflow
    step: StepSpec
    run: StepRun
    names: dict[str, Any]              # what expressions and templates see
    settings: Settings
    http: HttpClient | None         # None: no live calls (dry-run, replay)
    dry_run: bool                      # the workflow's effective dry-run for changes
    log: logging.LoggerAdapter
    run_branch: Callable[[list[str]], Awaitable[bool]] | None = None
    # ``async limiter(action, target) -> bool``: False refuses a remediation (rate limit).
    limiter: Callable[[str, str], Awaitable[bool]] | None = None
    # ``lock(name)``: an async context manager held by one replica at a time.
    lock: Callable[[str], Any] | None = None
    # ``audit(action, detail)``: puts this step's action on the audit trail (the service's);
    # None where there is none (replay, run).
    audit: StepAudit | None = None
    # ``async with paused():`` stops this attempt's timeout while it waits for a free slot of
    # an outside service, so the timeout counts the step's own work on the wire.
    paused: Pause | None = None
    # Where approvals are kept (engine.approvals.Gate); None where nobody can decide (run, replay).
    approvals: Gate | None = None
    # ``await waiting(True)`` records the run as waiting_approval; ``waiting(False)`` as running.
    waiting: Callable[[bool], Awaitable[None]] | None = None
    # When the workflow times out (epoch seconds), and who started the execution by hand.
    deadline: float | None = None
    triggered_by: str | None = None
    # Sends email notifications (steps.mail); None where no mail is sent (dry-run, replay).
    mailer: Mailer | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and across a resume after a crash."""
        return f"{self.execution_id}:{self.step.id}:{self.run.seq}"

    @property
    def attempt(self) -> int:
        return self.run.attempts

    def render(self, value: Any) -> Any:
        try:
            return render(value, self.names)
        except ExpressionError as exc:
            raise StepError(f"template: {exc}", retryable=False) from None

    @property
    def incident(self) -> dict[str, Any]:
        return self.names.get("incident") or {}


class Step:
    """A step type. Subclasses set ``type_name`` and ``Config`` and implement ``run``.

    ``config`` is always an instance of the subclass's ``Config`` (validated when rules
    load); it is typed ``Any`` here so that each subclass can name its own config class.
    """

    type_name: ClassVar[str]
    Config: ClassVar[type[StepConfig]] = StepConfig
    # True for the types whose requests go to agent-manager (through steps.agent.send).
    calls_agent_manager: ClassVar[bool] = False

    async def run(self, ctx: StepContext, config: Any) -> StepResult:
        raise NotImplementedError(f"step type {self.type_name!r} does not implement run()")

    @classmethod
    def context_from_output(cls, output: Any) -> dict[str, Any]:
        """What a finished run of this type adds to the context (``StepResult.context``),
        rebuilt from its recorded output when an execution resumes."""
        return {}

    @classmethod
    def branch_steps(cls, config: Any) -> list[str]:
        """Step ids this step runs itself, inside it (a parallel step's branches)."""
        return []

    @classmethod
    def targets(cls, config: Any) -> list[str]:
        """Step ids this config may jump to (besides on_success / on_failure)."""
        return []

    @classmethod
    def expressions(cls, config: Any) -> list[tuple[tuple, str]]:
        """(location inside config, source) of every expression the config holds."""
        return []

    @classmethod
    def refusals(cls, config: Any, policy: Policy) -> list[Refusal]:
        """What :mod:`engine.policy` refuses in the literal parts of this config, each with its
        location inside the config: ``aetherius check`` reports them with ``path:line``."""
        return []

    @classmethod
    def is_pause(cls) -> bool:
        """True for steps that let time pass, which makes a loop through them legal."""
        return False
