"""``decision``: the seed's ``conditions: [{if, then}]`` evaluated in the sandbox.

The first true ``if`` wins; ``default`` applies when none is. ``then`` names a step to
jump to (instead of ``on_success``), or else a value that later steps read as
``decision`` (and ``steps.<id>.output.value``) while the path goes on to ``on_success``.
Expressions are parsed and vetted once, when rules load; the conditions of one decision
share one evaluation budget.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import Field

from engine.exceptions import ExpressionError, StepError
from engine.expressions import Expression, new_budget
from steps.base import Step, StepConfig, StepContext, StepResult


class Branch(StepConfig):
    if_: str = Field(alias="if")
    then: str


class DecisionConfig(StepConfig):
    conditions: list[Branch] = Field(min_length=1)
    default: str | None = None


@lru_cache(maxsize=4096)
def _expression(source: str) -> Expression:
    return Expression(source)


class Decision(Step):
    type_name = "decision"
    Config = DecisionConfig

    async def run(self, ctx: StepContext, config: DecisionConfig) -> StepResult:
        chosen, matched = config.default, None
        budget = new_budget()
        for i, branch in enumerate(config.conditions):
            try:
                if _expression(branch.if_).evaluate(ctx.names, budget):
                    chosen, matched = branch.then, i
                    break
            except ExpressionError as exc:
                raise StepError(f"condition {i} ({branch.if_!r}) failed: {exc}", retryable=False) from None
        step_ids = {s.id for s in ctx.workflow.steps}
        output = {"value": chosen, "matched": matched,
                  "condition": config.conditions[matched].if_ if matched is not None else "default"}
        if chosen is not None and chosen in step_ids:
            return StepResult(output={**output, "jump": chosen}, next=[chosen],
                              context={"decision": chosen})
        return StepResult(output=output, context={"decision": chosen})

    @classmethod
    def context_from_output(cls, output: Any) -> dict[str, Any]:
        if not isinstance(output, dict):
            return {}
        return {"decision": output.get("jump") or output.get("value")}

    @classmethod
    def targets(cls, config: StepConfig) -> list[str]:
        assert isinstance(config, DecisionConfig)
        names = [b.then for b in config.conditions]
        if config.default:
            names.append(config.default)
        return names

    @classmethod
    def expressions(cls, config: StepConfig) -> list[tuple[tuple, str]]:
        assert isinstance(config, DecisionConfig)
        return [(("conditions", i, "if"), b.if_) for i, b in enumerate(config.conditions)]
