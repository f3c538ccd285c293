"""``decision``: the seed's ``conditions: [{if, then}]`` evaluated in the sandbox.

``then`` names a step to jump to, or else a value that later steps read as
``decision`` / ``steps.<id>.output.value``. The first true ``if`` wins; ``default``
applies when none is true.
"""

from __future__ import annotations

from pydantic import Field

from steps.base import Step, StepConfig


class Branch(StepConfig):
    if_: str = Field(alias="if")
    then: str


class DecisionConfig(StepConfig):
    conditions: list[Branch] = Field(min_length=1)
    default: str | None = None


class Decision(Step):
    type_name = "decision"
    Config = DecisionConfig

    @classmethod
    def targets(cls, config: DecisionConfig) -> list[str]:
        names = [b.then for b in config.conditions]
        if config.default:
            names.append(config.default)
        return names

    @classmethod
    def expressions(cls, config: DecisionConfig) -> list[tuple[tuple, str]]:
        return [(("conditions", i, "if"), b.if_) for i, b in enumerate(config.conditions)]
