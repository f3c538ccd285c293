"""``command``: read from the cluster through agent-manager (``POST /api/v1/commands``).

A command only reads: its tool, verb, flags and args pass :mod:`engine.policy` when rules
load and again, rendered, right before the request is sent (:func:`steps.agent.send`). A
change is a ``remediation`` step; ``allow_write`` is gone. The request carries no dry-run
flag, and the record says it was a read (``read_only: true``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from engine.exceptions import CommandFailed, NotAllowed
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
    # logs --previous of a container that never terminated: "empty" output, or "fail".
    missing_previous: Literal["empty", "fail"] = "empty"
    allow_write: Any = None

    @field_validator("allow_write")
    @classmethod
    def _gone(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("allow_write is gone: a command step only reads; "
                             "to change the cluster, use a remediation step")
        return value


# Resource names kubectl takes (plural, singular, short) -> (kind, namespaced).
_RESOURCES: dict[str, tuple[str, bool]] = {}
for _kind, _namespaced, _names in (
        ("Pod", True, ("pods", "pod", "po")), ("Node", False, ("nodes", "node", "no")),
        ("Deployment", True, ("deployments", "deployment", "deploy")),
        ("ReplicaSet", True, ("replicasets", "replicaset", "rs")),
        ("StatefulSet", True, ("statefulsets", "statefulset", "sts")),
        ("DaemonSet", True, ("daemonsets", "daemonset", "ds")), ("Job", True, ("jobs", "job")),
        ("CronJob", True, ("cronjobs", "cronjob", "cj")), ("Service", True, ("services", "service", "svc")),
        ("ConfigMap", True, ("configmaps", "configmap", "cm")), ("Secret", True, ("secrets", "secret")),
        ("PersistentVolumeClaim", True, ("persistentvolumeclaims", "persistentvolumeclaim", "pvc")),
        ("PersistentVolume", False, ("persistentvolumes", "persistentvolume", "pv")),
        ("StorageClass", False, ("storageclasses", "storageclass", "sc")),
        ("Namespace", False, ("namespaces", "namespace", "ns")),
        ("HorizontalPodAutoscaler", True, ("horizontalpodautoscalers", "horizontalpodautoscaler", "hpa")),
        ("ResourceQuota", True, ("resourcequotas", "resourcequota", "quota")),
        ("Event", True, ("events", "event", "ev"))):
    for _name in _names:
        _RESOURCES[_name] = (_kind, _namespaced)
NO_PREVIOUS = re.compile(r"previous terminated container .* not found", re.IGNORECASE)


def target_from_args(action: str, args: list[str], incident: dict[str, Any]) -> dict[str, Any] | None:
    """The object a ``get``/``describe`` names in its positional args (``storageclass fast``,
    ``storageclass/fast``, ``nodes``), or None when they name none."""
    if action not in ("get", "describe"):
        return None
    # Drop a flag's separate value (``-o wide``, ``-l app=x``): a flag followed by a word.
    flags_with_values = {"-o", "--output", "-l", "--selector", "--field-selector", "-n", "--namespace",
                         "--sort-by", "-L", "--label-columns", "--chunk-size", "--subresource"}
    positional = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in flags_with_values:
            skip = True
            continue
        if not arg.startswith("-"):
            positional.append(arg)
    if not positional:
        return None
    resource, _, name = positional[0].partition("/")
    found = _RESOURCES.get(resource.lower())
    if found is None:
        return None
    kind, namespaced = found
    if not name and len(positional) > 1 and "," not in resource:
        name = positional[1]
    target: dict[str, Any] = {"kind": kind}
    if namespaced:
        target["namespace"] = incident.get("namespace")
    if name:
        target["name"] = name
    return target


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
        try:
            args = render_args(config.args, ctx.names)
        except NotAllowed as exc:
            await refused(ctx, exc, writes=False, tool=config.tool, action=config.action, target=target)
            raise
        if config.target is not None:
            target.update({k: v for k, v in ctx.render(config.target.model_dump()).items() if v is not None})
        else:
            named = target_from_args(config.action, args, ctx.incident)
            if named is not None:
                target = named
        request = agent_request(ctx, config.tool, config.action, args, target, config.cluster)
        reason = not_called(ctx)
        if reason is not None:
            # Offline (replay, run without --live) or no agent-manager configured: the policy
            # still decides, then the record says what would have been read, and that it was not.
            await vet(ctx, request, writes=False)
            return StepResult(output={"status": "not_sent", "sent": False, "read_only": True,
                                      "reason": reason, "exit_code": 0, "stdout": "", "stderr": "",
                                      "request": request})
        try:
            answer = await send(ctx, request, writes=False)
        except CommandFailed as exc:
            previous = config.action == "logs" and any(
                a in ("--previous", "-p") or a.startswith("--previous=") for a in args)
            stderr = str((exc.output or {}).get("stderr") or "") if isinstance(exc.output, dict) else ""
            if previous and config.missing_previous == "empty" and NO_PREVIOUS.search(stderr):
                ctx.log.info("No previous container to read logs from: %s", stderr[:200])
                return StepResult(output={"status": "success", "exit_code": 0, "stdout": "", "stderr": stderr,
                                          "previous": False, "read_only": True,
                                          "note": "no previous container: it has not terminated since it "
                                                  "started, so there are no previous logs"})
            raise
        return StepResult(output={**answer, "read_only": True})
