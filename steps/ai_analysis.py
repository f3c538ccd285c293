"""``ai_analysis``: ask reasoning-service for a root cause (``POST /api/v1/analyze``).

It honours ``ai.timeout`` per call and ``ai.max_retries``. When the service is not
configured, or still fails after its retries, a built-in classifier over the evidence
answers instead, marked ``"source": "builtin"`` with the reason, so a workflow never
stalls on the AI. The answer becomes ``analysis`` for later steps and expressions.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Literal

from pydantic import Field

from engine.exceptions import StepError
from steps.base import Step, StepConfig, StepContext, StepResult
from steps.http import post_json

# (root cause, patterns) in order: the first class with a match in the evidence wins.
# Patterns are specific on purpose: every `kubectl describe pod` mentions ConfigMaps.
_CLASSES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (cause, re.compile("|".join(patterns)))
    for cause, patterns in (
        ("OOM", (r"oomkill", r"systemoom", r"out ?of ?memory", r"exit ?code:? 137", r"exit_code\W+137")),
        (
            "Config",
            (
                r"createcontainerconfigerror",
                r"(configmap|secret)s? \"?[\w.-]+\"? not found",
                r"couldn't find key",
                r"invalid configuration",
            ),
        ),
        ("Image", (r"errimagepull", r"imagepullbackoff", r"failed to pull image", r"back-off pulling image")),
        ("Probe", (r"(liveness|readiness|startup) probe failed", r"reason: unhealthy")),
        ("Scheduling", (r"failedscheduling", r"\d+/\d+ nodes are available", r"insufficient (cpu|memory)")),
    )
)
_SUMMARY = {
    "OOM": "The container was killed for exceeding its memory limit.",
    "Config": "The container cannot start because of missing or invalid configuration.",
    "Image": "The image cannot be pulled.",
    "Probe": "Health probes fail, so the kubelet restarts or withholds the container.",
    "Scheduling": "No node can take the pod.",
    "Unknown": "The evidence does not show a known cause.",
}


class AIAnalysisConfig(StepConfig):
    analysis_type: Literal["root_cause", "summary", "impact"] = "root_cause"
    # Step ids whose outputs are sent as evidence; empty means every step that ran before.
    evidence: list[str] = Field(default_factory=list)


def _evidence_text(incident: dict[str, Any], events: list[Any], evidence: dict[str, Any]) -> str:
    parts = [f"reason: {incident.get('reason') or ''}", str(incident.get("message") or "")]
    for event in events or []:
        if isinstance(event, dict):
            parts.append(f"reason: {event.get('reason') or ''} {event.get('message') or ''}")
    for output in evidence.values():
        if isinstance(output, dict):
            # What the cluster said, not what we asked (a request's args say nothing).
            for key in ("stdout", "stderr", "summary", "message"):
                if output.get(key):
                    parts.append(str(output[key]))
            if output.get("exit_code") == 137:
                parts.append("exit code 137")
        elif isinstance(output, str):
            parts.append(output)
    return "\n".join(parts).lower()


def classify(incident: dict[str, Any], events: list[Any], evidence: dict[str, Any]) -> dict[str, Any]:
    """The built-in classifier: simple, explainable rules over the evidence."""
    text = _evidence_text(incident, events, evidence)
    for cause, pattern in _CLASSES:
        found = pattern.search(text)
        if found is not None:
            return {
                "root_cause": cause,
                "confidence": 0.6,
                "summary": _SUMMARY[cause],
                "recommendations": [],
                "matched": found.group(0),
            }
    return {"root_cause": "Unknown", "confidence": 0.1, "summary": _SUMMARY["Unknown"], "recommendations": []}


def _valid_answer(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict) or not isinstance(answer.get("root_cause"), str):
        raise StepError("reasoning-service answered without a root_cause", retryable=True)
    confidence = answer.get("confidence", 0.0)
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise StepError("reasoning-service answered a non-numeric confidence", retryable=True)
    return {
        "root_cause": answer["root_cause"],
        "confidence": float(confidence),
        "summary": str(answer.get("summary") or ""),
        "recommendations": list(answer.get("recommendations") or []),
    }


class AIAnalysis(Step):
    type_name = "ai_analysis"
    Config = AIAnalysisConfig

    @classmethod
    def context_from_output(cls, output: Any) -> dict[str, Any]:
        return {"analysis": output} if isinstance(output, dict) else {}

    async def run(self, ctx: StepContext, config: AIAnalysisConfig) -> StepResult:
        steps = ctx.names.get("steps") or {}
        wanted = config.evidence or list(steps)
        evidence = {
            sid: steps[sid].get("output")
            for sid in wanted
            if sid in steps and steps[sid].get("output") is not None
        }
        events = ctx.names.get("events") or []
        settings = ctx.settings
        reason = "reasoning-service is not configured"
        if settings.live and settings.reasoning_service_url:
            url = f"{settings.reasoning_service_url.rstrip('/')}/api/v1/analyze"
            payload = {
                "analysis_type": config.analysis_type,
                "incident": ctx.incident,
                "evidence": json.loads(json.dumps(evidence, default=str)),
                "events": events[:20],
            }
            for attempt in range(settings.ai_max_retries + 1):
                try:
                    answer = await post_json(
                        ctx.http, url, payload, timeout=settings.ai_timeout, service="reasoning-service",
                        wait=ctx.paused)
                    output = _valid_answer(answer)
                    output["source"] = "reasoning-service"
                    return StepResult(output=output, context={"analysis": output})
                except StepError as exc:
                    reason = str(exc)
                    ctx.log.warning(
                        "AI analysis attempt %d/%d failed: %s", attempt + 1, settings.ai_max_retries + 1, exc
                    )
                    if not exc.retryable:
                        break
                    if attempt < settings.ai_max_retries:
                        await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        elif not settings.live and settings.reasoning_service_url:
            # Not configured reads the same live or not; configured, dry-run did not call it.
            reason = "dry-run: reasoning-service not called"
        output = classify(ctx.incident, events, evidence)
        output.update(source="builtin", fallback_reason=reason)
        ctx.log.info("AI analysis answered by the built-in classifier (%s): %s", reason, output["root_cause"])
        return StepResult(output=output, context={"analysis": output})
