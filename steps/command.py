"""``command``: run a tool through agent-manager (``POST /api/v1/commands``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from steps.base import Step, StepConfig

# kubectl verbs that only read. Anything else needs ``allow_write: true`` in the config,
# so a typo in a diagnosis workflow can never change the cluster.
READ_ONLY_ACTIONS = frozenset(
    {"logs", "describe", "get", "top", "events", "explain", "version", "api-resources",
     "api-versions", "cluster-info", "auth-can-i"}
)


class Target(StepConfig):
    namespace: str | None = None
    kind: str | None = None
    name: str | None = None
    container: str | None = None


class CommandConfig(StepConfig):
    tool: str = "kubectl"
    action: str
    args: list[str] = Field(default_factory=list)
    target: Target | None = None
    cluster: str | None = None
    allow_write: bool = False

    @model_validator(mode="after")
    def _read_only_unless_allowed(self) -> CommandConfig:
        if self.tool == "kubectl" and self.action not in READ_ONLY_ACTIONS and not self.allow_write:
            allowed = ", ".join(sorted(READ_ONLY_ACTIONS))
            raise ValueError(
                f"kubectl action {self.action!r} is not read-only; allowed: {allowed} "
                "(set allow_write: true to permit it, or use a remediation step)"
            )
        return self


class Command(Step):
    type_name = "command"
    Config = CommandConfig
