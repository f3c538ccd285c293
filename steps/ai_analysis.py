"""``ai_analysis``: ask reasoning-service for a root cause (``POST /api/v1/analyze``).

It honours ``ai.timeout`` per call and ``ai.max_retries``. When the service is not
configured, or still fails after its retries, the built-in classifier
(:mod:`steps.classifier`) answers from the evidence instead, marked ``"source": "builtin"``
with the reason and the evidence line it used, so a workflow never stalls on the AI. The
answer becomes ``analysis`` for later steps and expressions.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from pydantic import Field

from engine.exceptions import StepError
from steps.base import Step, StepConfig, StepContext, StepResult
from steps.classifier import classify
from steps.http import post_json

__all__ = ["AIAnalysis", "AIAnalysisConfig", "classify"]

class AIAnalysisConfig(StepConfig):
    analysis_type: Literal["root_cause", "summary", "impact"] = "root_cause"
    # Step ids whose outputs are sent as evidence; empty means every step that ran before.
    evidence: list[str] = Field(default_factory=list)


def _actions(ctx: StepContext) -> dict[str, str]:
    """What each command step of the workflow asks (logs, describe, get): what its output is."""
    return {step.id: str(step.config.get("action") or "") for step in ctx.workflow.steps
            if step.type == "command"}


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
        output = classify(ctx.incident, events, evidence, _actions(ctx))
        output.update(source="builtin", fallback_reason=reason)
        ctx.log.info("AI analysis answered by the built-in classifier (%s): %s", reason, output["root_cause"])
        return StepResult(output=output, context={"analysis": output})
