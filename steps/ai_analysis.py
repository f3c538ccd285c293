"""``ai_analysis``: ask reasoning-service for a root cause (``POST /api/v1/analyze``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from steps.base import Step, StepConfig


class AIAnalysisConfig(StepConfig):
    analysis_type: Literal["root_cause", "summary", "impact"] = "root_cause"
    # Step ids whose outputs are sent as evidence; empty means every step that ran before.
    evidence: list[str] = Field(default_factory=list)


class AIAnalysis(Step):
    type_name = "ai_analysis"
    Config = AIAnalysisConfig
