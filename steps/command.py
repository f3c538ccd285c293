"""``command``: run a tool through agent-manager (``POST /api/v1/commands``)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from engine.exceptions import CommandFailed, NotAllowed, StepError
from steps.base import Step, StepConfig, StepContext, StepResult
from steps.http import post_json

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


def default_target(incident: dict[str, Any]) -> dict[str, Any]:
    """The object an incident is about: its pod if it has one, else its object."""
    if incident.get("pod"):
        return {"namespace": incident.get("namespace"), "kind": "Pod", "name": incident["pod"],
                "container": incident.get("container")}
    return {"namespace": incident.get("namespace"), "kind": incident.get("kind"),
            "name": incident.get("name")}


def agent_request(ctx: StepContext, tool: str, action: str, args: list[str],
                  target: dict[str, Any], cluster: str | None) -> dict[str, Any]:
    timeout = ctx.step.timeout or ctx.settings.command_timeout
    return {
        "execution_id": ctx.execution_id, "step_id": ctx.step.id,
        "idempotency_key": ctx.idempotency_key,
        "cluster": cluster or ctx.incident.get("cluster") or ctx.settings.cluster,
        "tool": tool, "action": action, "args": args, "target": target,
        "timeout_s": max(1, math.ceil(timeout)),
    }


def not_called(ctx: StepContext) -> str:
    """Why agent-manager was not called, in the words the service would use: a missing URL
    first (the service has the same configuration), then dry-run."""
    if not ctx.settings.agent_manager_url:
        return "agent_manager.url is not configured"
    return "dry-run: agent-manager not called"


async def call_agent_manager(ctx: StepContext, request: dict[str, Any]) -> dict[str, Any]:
    """POST to agent-manager's commands API; a failed command raises CommandFailed."""
    base = ctx.settings.agent_manager_url
    if not base:
        raise StepError("agent_manager.url is not configured", retryable=False)
    answer = await post_json(ctx.http, f"{base.rstrip('/')}/api/v1/commands", request,
                             timeout=request["timeout_s"] + 5, service="agent-manager")
    if not isinstance(answer, dict) or "status" not in answer:
        raise StepError("agent-manager answered without a status", retryable=False)
    if answer.get("status") != "success" or answer.get("exit_code", 0) != 0:
        stderr = str(answer.get("stderr") or "")[:300]
        raise CommandFailed(
            f"{request['tool']} {request['action']} failed: exit code {answer.get('exit_code')}"
            + (f": {stderr}" if stderr else ""), output=answer)
    return answer


class Command(Step):
    type_name = "command"
    Config = CommandConfig

    async def run(self, ctx: StepContext, config: CommandConfig) -> StepResult:
        if config.tool == "kubectl" and config.action not in READ_ONLY_ACTIONS and not config.allow_write:
            raise NotAllowed(f"kubectl {config.action} is not read-only")
        target = default_target(ctx.incident)
        if config.target is not None:
            target.update({k: v for k, v in ctx.render(config.target.model_dump()).items() if v is not None})
        request = agent_request(ctx, config.tool, config.action, [str(a) for a in ctx.render(config.args)],
                                target, config.cluster)
        if not ctx.settings.live or not ctx.settings.agent_manager_url:
            # Offline (replay, run without --live) or no agent-manager configured: say what
            # would have run, and that it did not.
            return StepResult(output={"status": "dry_run", "dry_run": True, "reason": not_called(ctx),
                                      "exit_code": 0, "stdout": "", "stderr": "", "request": request})
        return StepResult(output=await call_agent_manager(ctx, request))
