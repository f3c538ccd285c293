"""``parallel``: run branches concurrently and join them.

Each branch is a list of step ids run in order. ``join: all`` waits for every branch,
``join: any`` for the first to succeed. ``on_branch_failure: fail`` fails the step as soon
as a branch fails; ``continue`` lets the others finish and judges at the join.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from steps.base import Step, StepConfig


class ParallelConfig(StepConfig):
    branches: list[list[str]] = Field(min_length=1)
    join: Literal["all", "any"] = "all"
    on_branch_failure: Literal["fail", "continue"] = "fail"

    @field_validator("branches", mode="before")
    @classmethod
    def _single_step_branches(cls, value: object) -> object:
        # ``branches: [a, b]`` is shorthand for ``[[a], [b]]``.
        if isinstance(value, list):
            return [[v] if isinstance(v, str) else v for v in value]
        return value


class Parallel(Step):
    type_name = "parallel"
    Config = ParallelConfig

    @classmethod
    def targets(cls, config: ParallelConfig) -> list[str]:
        return [step for branch in config.branches for step in branch]
