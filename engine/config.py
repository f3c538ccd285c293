"""Service configuration: one typed model holding every default.

The file is ``config/config.yaml`` (or ``--config FILE``); then the environment. Any key
can be overridden as ``AETHERIUS_<SECTION>__<KEY>`` (nested with more ``__``), for example
``AETHERIUS_NATS__URL=nats://nats:4222`` or ``AETHERIUS_AI__TIMEOUT=45s``. Values from the
environment are parsed as YAML scalars, so ``true``, ``3`` and ``30s`` mean what they say,
and an empty value means "not set" (``null``).

Every section refuses unknown keys, so ``service: {leese: 5s}`` is an error and not a
silently ignored line. :func:`load_config` reports every problem at once, each located
where the operator should look: ``config.yaml:12: service.leese: unknown key (did you mean
'lease'?)``, or the environment variable that set it. Durations are written as today
(``30s``, ``5m``, ``30d`` or seconds) and held as float seconds.

Secrets (webhook URLs, the PagerDuty routing key, the SMTP password, the database password
and DSN) belong in the environment. They are
held as :class:`~pydantic.SecretStr`, so neither a repr, a log line nor an error message
shows them (errors never repeat the offending value); :meth:`Config.step_settings` and
:func:`engine.devservers.database_dsn_from_config` hand the plain values to what uses them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.approvals import ApprovalDefaults, ApprovalRule
from engine.auth import Role
from engine.durations import Duration
from engine.exceptions import ConfigError, ConfigProblem
from engine.outcomes import Outcome
from engine.policy import ACTIONS, PROTECTED_NAMESPACES, Policy, is_label
from engine.rules.yamlsource import LineMap, load_documents, yaml_error_line
from steps.base import Settings
from steps.channels import (
    DEFAULT_PAGERDUTY_SEVERITIES,
    EmailSettings,
    PagerDutySeverity,
    Route,
    channel_problem,
)

ENV_PREFIX = "AETHERIUS_"
DEFAULT_PATHS = (Path("config/config.yaml"),)

Port = Annotated[int, Field(ge=0, le=65535)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors; numbers are read as text where text is due
    (``replica_id: 7``, a numeric password from the environment)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # ``redis:`` with every key commented out is null in YAML: it means "all defaults".
        if isinstance(data, dict):
            return {key: {} if value is None and _is_section(cls, key) else value
                    for key, value in data.items()}
        return data


def _is_section(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key)
    annotation = field.annotation if field is not None else None
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


class RulesConfig(Section):
    dir: Path = Path("rules")


class NatsConfig(Section):
    url: str | None = None
    subjects: tuple[str, ...] = ("internal.event.critical", "internal.event.anomaly")
    stream: str = "AETHERIUS_EVENTS"
    durable: str = "aetherius"
    batch: Positive = 256
    ack_wait: Duration = 30.0


class AiConfig(Section):
    reasoning_service_url: str | None = None
    timeout: Duration = 30.0
    max_retries: Count = 3
    max_connections: Positive = 20


class AgentManagerConfig(Section):
    url: str | None = None
    timeout: Duration = 30.0
    cluster: str | None = None
    max_connections: Positive = 100


class DatabaseConfig(Section):
    dsn: SecretStr | None = None
    host: str | None = None
    port: Port = 5432
    database: str = "aetherius_orchestrator"
    user: str = "postgres"
    password: SecretStr | None = None
    pool_size: Positive = 10


class RedisConfig(Section):
    url: str | None = None
    prefix: str = "aetherius:"


class HttpConfig(Section):
    host: str = "127.0.0.1"
    port: Port = 8081
    public_url: str | None = None
    metrics_public: bool = True
    allowed_origins: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        """The base of links in notifications: ``public_url``, else this host's port."""
        return self.public_url or f"http://localhost:{self.port}"


def known_actions(value: tuple[str, ...]) -> tuple[str, ...]:
    """A list of remediation actions, each one the policy knows (engine.policy.ACTIONS)."""
    unknown = [action for action in value if action not in ACTIONS]
    if unknown:
        raise ValueError(f"unknown remediation action(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(sorted(ACTIONS))}")
    return value


class RateLimitConfig(Section):
    max: Count = 3
    per: Duration = 3600.0


class RemediationConfig(Section):
    dry_run: bool = True
    allowed_actions: tuple[str, ...] = (
        "patch_deployment", "increase_memory", "restart_rollout", "delete_pod", "cordon_node", "scale")
    max_memory_factor: float = Field(2.0, gt=0)
    max_memory_mib: Positive = 16384
    max_replicas: Positive = 50
    rate_limit: RateLimitConfig = RateLimitConfig()

    _known_actions = field_validator("allowed_actions")(classmethod(lambda cls, v: known_actions(v)))


class PolicyConfig(Section):
    """What the service decides of the policy every agent-manager request passes (the
    table itself is :mod:`engine.policy`)."""

    allow_secrets: bool = False
    protected_namespaces: tuple[str, ...] = tuple(sorted(PROTECTED_NAMESPACES))
    override_roles: tuple[Role, ...] = (Role.ADMIN,)

    @field_validator("protected_namespaces")
    @classmethod
    def _namespaces(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [ns for ns in value if not is_label(ns)]
        if bad:
            raise ValueError(f"not a namespace name (a DNS-1123 label): {', '.join(map(repr, bad))}")
        return value


class IntakeConfig(Section):
    max_event_bytes: Positive = 256 * 1024
    max_request_bytes: Positive = 4 * 1024 * 1024     # one POST /api/v1/events body
    max_events_per_request: Positive = 1000
    dead_letter_bytes: Count = 64 * 1024              # of the raw payload, kept with its size and SHA-256
    concurrent_requests: Positive = 2                 # POST /api/v1/events bodies read at once


class ApprovalRuleConfig(Section):
    """One ``approvals.required`` entry: changes matching it wait for a human."""

    actions: tuple[str, ...] = ()       # empty: every action
    namespaces: tuple[str, ...] = ()    # empty: every namespace
    dry_run: bool | None = False        # false: live changes only; true: dry runs only; null: both

    _known = field_validator("actions")(classmethod(lambda cls, v: known_actions(v)))


class SlackApprovalsConfig(Section):
    """Slack interactive buttons (POST /api/v1/approvals/slack): the app's signing secret and
    which Slack user ids may decide, as which approver name."""

    signing_secret: SecretStr | None = None
    users: dict[str, str] = Field(default_factory=dict)    # Slack user id: approver name


class ApprovalsConfig(Section):
    required: tuple[ApprovalRuleConfig, ...] = ()
    timeout: Duration = 1800.0
    on_timeout: Literal["deny", "approve"] = "deny"
    approvers: tuple[str, ...] = ()     # token names (or Slack-mapped names); empty: any operator
    poll: Duration = 1.0
    slack: SlackApprovalsConfig = SlackApprovalsConfig()

    def defaults(self) -> ApprovalDefaults:
        return ApprovalDefaults(
            rules=tuple(ApprovalRule(frozenset(r.actions), frozenset(r.namespaces), r.dry_run)
                        for r in self.required),
            timeout=self.timeout, on_timeout=self.on_timeout, approvers=frozenset(self.approvers),
            poll=self.poll)


class ServiceConfig(Section):
    replica_id: str | None = None
    data_dir: Path = Path("var")
    lease: Duration = 15.0
    shutdown_grace: Duration = 20.0
    retention: Duration = 30 * 86400.0
    # The cyclic garbage collector's thresholds once the replica has started (engine.gctune);
    # [700, 10, 10] is CPython's default.
    gc_thresholds: tuple[Positive, Positive, Positive] = (50_000, 20, 10)


class ExecutionsConfig(Section):
    """Admission: at most ``max_running`` executions run on a replica at once; the others
    wait as ``queued`` in the database, first in, first out."""

    max_running: Positive = 200
    max_queued: Positive = 10_000      # past this many queued, the NATS intake waits (events stay in NATS)


class WorkflowConfig(Section):
    """Which engine runs workflow executions: ``builtin`` (the runner on PostgreSQL) or
    ``temporal`` (a Temporal server; see the ``temporal`` section)."""

    engine: Literal["builtin", "temporal"] = "builtin"


class TemporalConfig(Section):
    """Where executions run with ``workflow.engine: temporal`` (engine.temporal)."""

    address: str | None = None          # host:port of the frontend; null: an embedded dev server
    namespace: str = "default"
    task_queue: str = "aetherius"
    worker: bool = True                 # run a worker in the service (false: another process hosts it)
    heartbeat_timeout: Duration = 10.0  # a worker silent this long is taken for dead; its step runs again
    max_concurrent_workflow_tasks: Positive = 100   # the worker's workflow tasks at once
    max_concurrent_activities: Positive = 200       # the worker's step activities (and mirror writes) at once


class AuthConfig(Section):
    bootstrap_token: SecretStr | None = None
    token_cache: Duration = 2.0
    session_ttl: Duration = 43200.0     # a web console login lasts this long (12 h)

    @field_validator("bootstrap_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (make one with: aetherius token new)")
        return value


class RetriesConfig(Section):
    """The retry of a step whose workflow sets none, for outside services that are down."""

    max_attempts: Annotated[int, Field(ge=1, le=100)] = 10
    initial_interval: Duration = 1.0
    multiplier: float = Field(2.0, ge=1.0, le=10.0)
    max_interval: Duration = 30.0


class AuditConfig(Section):
    retention: Duration = 365 * 86400.0


class SlackConfig(Section):
    webhook_url: SecretStr | None = None


class TeamsConfig(Section):
    webhook_url: SecretStr | None = None     # a Teams Workflows incoming webhook (a secret)


class PagerDutyConfig(Section):
    """PagerDuty Events API v2: ``POST {url}/v2/enqueue``, one alert per incident (``dedup_key``)."""

    routing_key: SecretStr | None = None     # the integration's routing key (a secret)
    url: str = "https://events.pagerduty.com"
    # Our severities -> PagerDuty's; a severity not listed here is sent as "warning".
    severities: dict[str, PagerDutySeverity] = Field(
        default_factory=lambda: dict(DEFAULT_PAGERDUTY_SEVERITIES))  # type: ignore[arg-type]
    # The outcomes of the incident's execution on which closing it resolves its alert; any
    # other (failed, needs_human, dry_run, ...) leaves the alert open for a human.
    resolve_on: tuple[Outcome, ...] = (Outcome.REMEDIATED,)

    @field_validator("severities")
    @classmethod
    def _lower(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in value.items()}


class EmailConfig(Section):
    """SMTP (aiosmtplib). The password belongs in AETHERIUS_NOTIFICATIONS__EMAIL__PASSWORD."""

    host: str | None = None
    port: Port = 587
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str | None = None
    to: tuple[str, ...] = ()
    timeout: Duration = 30.0
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _usable(self) -> EmailConfig:
        if self.host and not self.sender:
            raise ValueError("sender: needed when host is set (the From address)")
        if self.security == "none" and (self.username or plain(self.password)):
            raise ValueError("security none would send the credentials in clear text: use starttls or tls")
        for address in (self.sender, *self.to):
            if address is not None and ("@" not in address or any(c in address for c in "\r\n,;")):
                raise ValueError("sender/to: expected email addresses")
        return self


class RouteMatchConfig(Section):
    severity: tuple[str, ...] = ()       # empty: any
    namespace: tuple[str, ...] = ()      # globs: prod, prod-*
    strategy: tuple[str, ...] = ()       # globs


class RouteConfig(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    match: RouteMatchConfig = RouteMatchConfig()
    channels: tuple[str, ...] = Field(min_length=1)
    continue_: bool = Field(False, alias="continue")

    @field_validator("channels")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems = [p for p in map(channel_problem, value) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return value


class NotificationsConfig(Section):
    slack: SlackConfig = SlackConfig()
    webhooks: dict[str, SecretStr | None] = Field(default_factory=dict)   # name: url
    teams: TeamsConfig = TeamsConfig()
    pagerduty: PagerDutyConfig = PagerDutyConfig()
    email: EmailConfig = EmailConfig()
    # Where ``channel: route`` steps (and the service's PagerDuty pages) send an incident.
    routes: tuple[RouteConfig, ...] = ()
    default_channels: tuple[str, ...] = ("slack",)

    @field_validator("default_channels")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems = [p for p in map(channel_problem, value) if p]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _webhooks_named(self) -> NotificationsConfig:
        named = {c for r in self.routes for c in r.channels} | set(self.default_channels)
        unknown = sorted(c for c in named if c.startswith("webhook:") and c[8:] not in self.webhooks)
        if unknown:
            raise ValueError(f"routes name webhook(s) that notifications.webhooks does not have: "
                             f"{', '.join(unknown)}")
        return self

    def routing(self) -> tuple[Route, ...]:
        return tuple(Route(channels=r.channels, severity=r.match.severity, namespace=r.match.namespace,
                           strategy=r.match.strategy, cont=r.continue_) for r in self.routes)

    def email_settings(self) -> EmailSettings:
        e = self.email
        return EmailSettings(host=e.host, port=e.port, security=e.security, username=e.username,
                             password=plain(e.password), sender=e.sender, to=e.to, timeout=e.timeout,
                             ca_file=str(e.ca_file) if e.ca_file else None)


class LoggingConfig(Section):
    level: Annotated[Literal["debug", "info", "warning", "error", "critical"],
                     BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)] = "info"
    format: Literal["text", "json"] = "text"
    file: Path | None = Path("var/log/orchestrator.log")
    max_bytes: Count = 10 * 1024 * 1024
    backups: Count = 5


class Config(Section):
    """The whole configuration. ``Config()`` is the default one."""

    rules: RulesConfig = RulesConfig()
    nats: NatsConfig = NatsConfig()
    ai: AiConfig = AiConfig()
    agent_manager: AgentManagerConfig = AgentManagerConfig()
    database: DatabaseConfig = DatabaseConfig()
    redis: RedisConfig = RedisConfig()
    http: HttpConfig = HttpConfig()
    remediation: RemediationConfig = RemediationConfig()
    policy: PolicyConfig = PolicyConfig()
    intake: IntakeConfig = IntakeConfig()
    service: ServiceConfig = ServiceConfig()
    executions: ExecutionsConfig = ExecutionsConfig()
    notifications: NotificationsConfig = NotificationsConfig()
    logging: LoggingConfig = LoggingConfig()
    auth: AuthConfig = AuthConfig()
    audit: AuditConfig = AuditConfig()
    retries: RetriesConfig = RetriesConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    workflow: WorkflowConfig = WorkflowConfig()
    temporal: TemporalConfig = TemporalConfig()

    def step_settings(self, *, live: bool = True, virtual_time: bool = False) -> Settings:
        """What steps read from this configuration, secrets in plain text."""
        notes = self.notifications
        return Settings(
            agent_manager_url=self.agent_manager.url,
            reasoning_service_url=self.ai.reasoning_service_url,
            ai_timeout=self.ai.timeout,
            ai_max_retries=self.ai.max_retries,
            slack_webhook_url=plain(notes.slack.webhook_url),
            webhooks={name: url for name, secret in notes.webhooks.items() if (url := plain(secret))},
            teams_webhook_url=plain(notes.teams.webhook_url),
            pagerduty_routing_key=plain(notes.pagerduty.routing_key),
            pagerduty_url=notes.pagerduty.url,
            pagerduty_severities=dict(notes.pagerduty.severities),
            pagerduty_resolve_on=frozenset(str(o) for o in notes.pagerduty.resolve_on),
            email=notes.email_settings(),
            routes=notes.routing(),
            default_channels=notes.default_channels,
            command_timeout=self.agent_manager.timeout,
            cluster=self.agent_manager.cluster,
            dry_run=self.remediation.dry_run,
            allowed_actions=frozenset(self.remediation.allowed_actions),
            max_memory_factor=self.remediation.max_memory_factor,
            max_memory_mib=self.remediation.max_memory_mib,
            max_replicas=self.remediation.max_replicas,
            allow_secrets=self.policy.allow_secrets,
            protected_namespaces=frozenset(self.policy.protected_namespaces),
            public_url=self.http.base_url,
            approvals=self.approvals.defaults(),
            live=live,
            virtual_time=virtual_time,
        )


    def agent_policy(self) -> Policy:
        """The policy as rules are checked against it (``aetherius check``, reloads, the API):
        the one :meth:`step_settings` hands the steps."""
        return self.step_settings(live=False).policy


def plain(secret: SecretStr | None) -> str | None:
    """The secret's value, None when unset or empty (an empty variable means "not set")."""
    return (secret.get_secret_value() or None) if secret is not None else None


# --------------------------------------------------------------------------- loading

Loc = tuple[str | int, ...]


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The file (``path``, else ``config/config.yaml`` if it exists), then the environment.

    Raises :class:`ConfigError` listing every problem, each with its file and line or its
    environment variable."""
    file = Path(path) if path else next((p for p in DEFAULT_PATHS if p.exists()), None)
    data, lines = _read(file) if file is not None else ({}, LineMap())
    source = str(file) if file is not None else ""
    from_env = _apply_environment(data, os.environ if environ is None else environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, source, lines, from_env) for error in exc.errors(include_url=False)]
        problems.sort(key=lambda p: (p.line is None, p.line or 0, p.source, p.key))
        raise ConfigError(problems=problems) from None


def _read(file: Path) -> tuple[dict[str, Any], LineMap]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: {exc.strerror}") from None
    try:
        documents = load_documents(text)
    except yaml.YAMLError as exc:
        line, message = yaml_error_line(exc, text)
        raise ConfigError(problems=[ConfigProblem(str(file), line, "", message)]) from None
    if not documents:
        return {}, LineMap()
    if len(documents) > 1:
        raise ConfigError(problems=[ConfigProblem(str(file), 1, "", "one YAML document expected")])
    data, lines = documents[0]
    if not isinstance(data, dict):
        raise ConfigError(problems=[ConfigProblem(str(file), 1, "", "the config must be a mapping")])
    return data, lines


def _apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[Loc, str]:
    """Set ``AETHERIUS_<SECTION>__<KEY>`` values into ``data``; return which variable set which key."""
    origins: dict[Loc, str] = {}
    problems = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(ConfigProblem(name, None, _dotted(parts[:i + 1]), "is not a section"))
                break
            node = child
        else:
            try:
                node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
            except yaml.YAMLError:
                node[parts[-1]] = raw
            origins[parts] = name
    if problems:
        raise ConfigError(problems=problems)
    return origins


def _problem(error: Any, source: str, lines: LineMap, from_env: dict[Loc, str]) -> ConfigProblem:
    loc: Loc = tuple(error["loc"])
    key = _dotted(loc)
    if error["type"] == "extra_forbidden":
        message = "unknown key" + _suggestion(loc)
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    for end in range(len(loc), 0, -1):
        variable = from_env.get(loc[:end])
        if variable is not None:
            return ConfigProblem(variable, None, key, message)
    return ConfigProblem(source or "configuration", lines.line(loc) if source else None, key, message)


def _suggestion(loc: Loc) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not _is_section(model, str(part)):
            return ""
        model = field.annotation  # type: ignore[assignment]  # a section, checked just above
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):   # a list index
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def flat_defaults(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, Any]:
    """``{"service.lease": 15.0, ...}``: every key of the model with its default (for the docs' test)."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if _is_section(model, name):
            out.update(flat_defaults(field.annotation, f"{prefix}{name}."))  # type: ignore[arg-type]
        else:
            out[prefix + name] = field.get_default(call_default_factory=True)
    return out
