"""``command``: read from the cluster through agent-manager (``POST /api/v1/commands``).

A command only reads: its tool, verb, flags and args pass :mod:`engine.policy` when rules
load and again, rendered, right before the request is sent (:func:`steps.agent.send`). A
change is a ``remediation`` step; ``allow_write`` is gone. The request carries no dry-run
flag, and the record says it was a read (``read_only: true``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from engine.exceptions import NotAllowed
from engine.policy import Policy, Refusal, read_refusals, render_args
from steps.agent import agent_request as agent_request
from steps.agent import default_target, not_called, refused, send, vet
from steps.base import Step, StepConfig, StepContext, StepResult


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
    allow_write: Any = None

    @field_validator("allow_write")
    @classmethod
    def _gone(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("allow_write is gone: a command step only reads; "
                             "to change the cluster, use a remediation step")
        return value


class Command(Step):
    type_name = "command"
    Config = CommandConfig
    calls_agent_manager = True

    @classmethod
    def refusals(cls, config: CommandConfig, policy: Policy) -> list[Refusal]:
        target = config.target.model_dump(exclude_none=True) if config.target is not None else None
        return read_refusals(config.tool, config.action, config.args, target, config.cluster, policy)

    async def run(self, ctx: StepContext, config: CommandConfig) -> StepResult:
        target = default_target(ctx.incident)
        if config.target is not None:
            target.update({k: v for k, v in ctx.render(config.target.model_dump()).items() if v is not None})
        try:
            args = render_args(config.args, ctx.names)
        except NotAllowed as exc:
            await refused(ctx, exc, writes=False, tool=config.tool, action=config.action, target=target)
            raise
        request = agent_request(ctx, config.tool, config.action, args, target, config.cluster)
        reason = not_called(ctx)
        if reason is not None:
            # Offline (replay, run without --live) or no agent-manager configured: the policy
            # still decides, then the record says what would have been read, and that it was not.
            await vet(ctx, request, writes=False)
            return StepResult(output={"status": "not_sent", "sent": False, "read_only": True,
                                      "reason": reason, "exit_code": 0, "stdout": "", "stderr": "",
                                      "request": request})
        return StepResult(output={**await send(ctx, request, writes=False), "read_only": True})
