"""agent-manager's one door: every request a step makes to ``POST /api/v1/commands``.

Both step types that reach the cluster (``command``: reads; ``remediation``: changes) build
their request with :func:`agent_request` and send it with :func:`send`, which applies the
policy (:func:`engine.policy.enforce`) to the fully rendered request right before it goes,
whatever the step checked before. A refusal raises ``NotAllowed`` and is put on the audit
trail; nothing is sent. :func:`vet` is the same check for a step that wants the verdict
before it takes a lock or a rate-limit slot, or that will not call out (dry-run, replay), so
``aetherius run`` refuses what the service would.
"""

from __future__ import annotations

import math
from typing import Any

from engine.exceptions import CommandFailed, NotAllowed, StepError
from engine.policy import Verdict, enforce
from steps.base import StepContext
from steps.http import post_json


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


def not_called(ctx: StepContext) -> str | None:
    """Why agent-manager will not be called, in the words the service would use (a missing
    URL first: the service has the same configuration, then dry-run); None: it will be."""
    if not ctx.settings.agent_manager_url:
        return "agent_manager.url is not configured"
    if not ctx.settings.live:
        return "dry-run: agent-manager not called"
    return None


async def refused(ctx: StepContext, exc: NotAllowed, *, writes: bool, tool: Any, action: Any,
                  target: Any = None) -> None:
    """Log a refusal of the policy and put it on the audit trail (the caller raises it)."""
    ctx.log.warning("Policy refused %s %s: %s", tool, action, exc)
    if ctx.audit is not None:
        await ctx.audit("policy.refused", {"idempotency_key": ctx.idempotency_key, "tool": tool,
                                           "action": action, "target": target, "writes": writes,
                                           "reason": str(exc), "attempt": ctx.attempt})


async def vet(ctx: StepContext, request: dict[str, Any], *, writes: bool) -> Verdict:
    """The policy's verdict on ``request``; a refusal is audited and raised as NotAllowed."""
    try:
        return enforce(request, ctx.settings.policy, writes=writes, execution_dry_run=ctx.dry_run)
    except NotAllowed as exc:
        await refused(ctx, exc, writes=writes, tool=request.get("tool"), action=request.get("action"),
                      target=request.get("target"))
        raise


async def send(ctx: StepContext, request: dict[str, Any], *, writes: bool) -> dict[str, Any]:
    """The policy's last guard, then the POST; a failed command raises CommandFailed."""
    await vet(ctx, request, writes=writes)
    base = ctx.settings.agent_manager_url
    if not base:
        raise StepError("agent_manager.url is not configured", retryable=False)
    answer = await post_json(ctx.http, f"{base.rstrip('/')}/api/v1/commands", request,
                             timeout=request["timeout_s"] + 5, service="agent-manager", wait=ctx.paused)
    if not isinstance(answer, dict) or "status" not in answer:
        raise StepError("agent-manager answered without a status", retryable=False)
    if answer.get("status") != "success" or answer.get("exit_code", 0) != 0:
        stderr = str(answer.get("stderr") or "")[:300]
        raise CommandFailed(
            f"{request['tool']} {request['action']} failed: exit code {answer.get('exit_code')}"
            + (f": {stderr}" if stderr else ""), output=answer)
    return answer
