"""``remediation``: change the cluster through agent-manager, safely.

Safe by default:

- every request passes :mod:`engine.policy` (the action, its target's kind and namespace,
  its params, its dry-run flag) when rules load and right before it is sent; no remediation
  runs in a protected namespace (``policy.protected_namespaces``);
- **dry-run** unless the service config (``remediation.dry_run: false``), the workflow
  (``dry_run``) and the step (``config.dry_run``) all allow a live change; a dry-run still
  asks agent-manager for a server-side dry run, so the answer shows what would change. The
  step's record says ``dry_run`` exactly as the request it sent (or would have sent) did;
- only actions on the **allowlist** (``remediation.allowed_actions``);
- a **cap** on one change: memory at most ``max_memory_factor`` (x2) and never above
  ``max_memory_mib``; replicas never above ``max_replicas`` nor more than doubled;
- an **idempotency key** per execution and step run, the same on every retry and after
  a resume, so agent-manager never applies a change twice;
- a human's **approval** where the service config (``approvals.required``) or the step
  (``config.approval``) asks for one (:mod:`steps.approval`): the plan (the request and
  agent-manager's dry run of it) is shown, the step waits durably, and only an approval of
  that very plan lets the change go; a denial or an expiry takes the ``on_failure`` path.

``patch_deployment`` (the seed's action) applies the patch named by ``params.patch`` or,
without one, by the preceding decision's value: ``increase_memory``, ``restart_rollout``
or ``scale``. Any other value (``notify_owner``) means there is nothing to patch: the step
is skipped and says why.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from engine.approvals import ApprovalSpec
from engine.exceptions import NotAllowed
from engine.policy import ACTIONS, PATCHES, Policy, Refusal, write_refusals
from engine.statuses import StepStatus
from steps.agent import agent_request, not_called, send, vet
from steps.approval import obtain
from steps.base import Step, StepConfig, StepContext, StepResult

DEFAULT_MEMORY_FACTOR = 1.5


class RemediationConfig(StepConfig):
    action_type: str = "kubectl"    # the tool the change goes through (engine.policy.ACTION_TYPES)
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool | None = None
    # Ask a human before this change (engine.approvals); the service config may require it anyway.
    approval: ApprovalSpec | None = None

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in ACTIONS:
            raise ValueError(f"unknown remediation action {value!r}; known: {', '.join(sorted(ACTIONS))}")
        return value


def _number(params: dict[str, Any], key: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise NotAllowed(f"params.{key} must be a number, got {value!r}") from None


def _cap(action: str, params: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Refuse changes bigger than the configured caps; return the params to send."""
    s = ctx.settings
    out = dict(params)
    if action == "increase_memory":
        given = _number(params, "factor")
        factor = DEFAULT_MEMORY_FACTOR if given is None else given
        if factor <= 1:
            raise NotAllowed(f"memory factor {factor:g} would not increase memory")
        if factor > s.max_memory_factor:
            raise NotAllowed(f"memory factor {factor:g} exceeds the cap x{s.max_memory_factor:g}")
        out["factor"] = factor
        out["max_memory_mib"] = s.max_memory_mib
        current = _number(params, "current_memory_mib")
        target = _number(params, "memory_mib")
        if target is None and current:
            target = current * factor
        if target is not None and target <= 0:
            raise NotAllowed(f"memory_mib {target:g} is not a memory limit")
        if target is not None:
            if current and target > current * s.max_memory_factor:
                raise NotAllowed(f"{target:g} MiB is more than x{s.max_memory_factor:g} of {current:g} MiB")
            if target > s.max_memory_mib:
                raise NotAllowed(f"{target:g} MiB exceeds the maximum {s.max_memory_mib} MiB")
            out["memory_mib"] = int(target)
    elif action == "scale":
        replicas = _number(params, "replicas")
        if replicas is None:
            raise NotAllowed("scale needs params.replicas")
        current = _number(params, "current_replicas")
        if replicas > s.max_replicas:
            raise NotAllowed(f"{replicas:g} replicas exceeds the maximum {s.max_replicas}")
        if current and replicas > current * 2:
            raise NotAllowed(f"scaling {current:g} -> {replicas:g} more than doubles the replicas")
        out["replicas"] = int(replicas)
    return out


def _target(action: str, incident: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    if action == "cordon_node":
        return {"kind": "Node", "name": params.get("node") or incident.get("node")}
    if action == "delete_pod":
        return {"kind": "Pod", "namespace": incident.get("namespace"),
                "name": params.get("pod") or incident.get("pod")}
    return {"kind": params.get("kind") or incident.get("workload_kind") or "Deployment",
            "namespace": incident.get("namespace"),
            "name": params.get("name") or incident.get("workload"),
            "container": params.get("container") or incident.get("container")}


class Remediation(Step):
    type_name = "remediation"
    Config = RemediationConfig
    calls_agent_manager = True

    @classmethod
    def refusals(cls, config: RemediationConfig, policy: Policy) -> list[Refusal]:
        return write_refusals(config.action_type, config.action, config.params, policy)

    @staticmethod
    async def _send(ctx: StepContext, request: dict[str, Any]) -> dict[str, Any]:
        """Every request is on the audit trail before it leaves, dry-run or not."""
        if ctx.audit is not None:
            await ctx.audit("remediation.request", {
                "idempotency_key": request["idempotency_key"], "action": request["action"],
                "target": request["target"], "dry_run": request["dry_run"], "params": request.get("params"),
                "attempt": ctx.attempt})
        return await send(ctx, request, writes=True)

    async def run(self, ctx: StepContext, config: RemediationConfig) -> StepResult:
        params = ctx.render(config.params)
        action = config.action
        if action == "patch_deployment":
            patch = params.pop("patch", None) or ctx.names.get("decision")
            if patch not in PATCHES:
                return StepResult(status=StepStatus.SKIPPED, output={
                    "applied": False, "action": action,
                    "reason": f"the decision ({patch!r}) names no patch to apply"})
            action = patch
        if action not in ctx.settings.allowed_actions or config.action not in ctx.settings.allowed_actions:
            raise NotAllowed(f"remediation action {action!r} is not in remediation.allowed_actions")
        params = _cap(action, params, ctx)
        dry_run = (ctx.settings.dry_run or ctx.dry_run or config.dry_run is True
                   or not ctx.settings.live)
        target = _target(action, ctx.incident, params)
        request = agent_request(ctx, config.action_type, action, [], target, None)
        request.update(params=params, dry_run=dry_run)
        verdict = await vet(ctx, request, writes=True)
        # A human's approval, where policy or the step asks for one: after the policy, before
        # the rate limit and the lock; bound to this very request (its digest).
        approved = await obtain(ctx, config.approval, request, verdict, self._send)
        if isinstance(approved, StepResult):
            return approved
        where = f"{target.get('kind')}/{target.get('namespace') or '-'}/{target.get('name')}"
        if not dry_run and ctx.limiter is not None and not await ctx.limiter(action, where):
            raise NotAllowed(f"{action} on {where}: remediation rate limit reached "
                             "(remediation.rate_limit); not applied")
        reason = not_called(ctx)
        if reason is not None:
            return StepResult(output={"status": "not_sent", "sent": False, "applied": False,
                                      "dry_run": dry_run, "reason": reason, "action": action,
                                      "request": request,
                                      **({"approval": approved} if approved else {})})
        ctx.log.info("Remediation %s on %s/%s (dry_run=%s, key=%s)", action, target.get("kind"),
                     target.get("name"), dry_run, request["idempotency_key"])
        if ctx.lock is not None:
            # One change to a given object at a time, across every replica.
            async with ctx.lock(f"remediation:{where}"):
                answer = await self._send(ctx, request)
        else:
            answer = await self._send(ctx, request)
        # The record says what was sent, whatever agent-manager's answer holds.
        return StepResult(output={**answer, "sent": True, "applied": not dry_run, "dry_run": dry_run,
                                  "action": action, "target": target,
                                  **({"approval": approved} if approved else {})})
