"""``parallel``: run branches concurrently and join them.

Each branch is a list of step ids run in order. ``join: all`` waits for every branch,
``join: any`` for the first to succeed. ``on_branch_failure: fail`` fails the step as soon
as a branch fails; ``continue`` lets the others finish and judges at the join.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field, field_validator

from engine.exceptions import StepError
from steps.base import Step, StepConfig, StepContext, StepResult


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

    async def run(self, ctx: StepContext, config: ParallelConfig) -> StepResult:
        assert ctx.run_branch is not None, "the runner provides run_branch"
        tasks = {asyncio.ensure_future(ctx.run_branch(branch)): i for i, branch in enumerate(config.branches)}
        results: dict[int, bool] = {}
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    results[tasks[task]] = task.result()
                if config.join == "any" and any(results.values()):
                    break
                if config.on_branch_failure == "fail" and not all(results.values()):
                    break
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        failed = sorted(i for i, ok in results.items() if not ok)
        succeeded = sorted(i for i, ok in results.items() if ok)
        output = {"join": config.join, "succeeded": succeeded, "failed": failed,
                  "cancelled": sorted(set(range(len(config.branches))) - set(results))}
        if config.join == "any" and succeeded:
            return StepResult(output=output)
        if config.join == "all" and not failed and len(succeeded) == len(config.branches):
            return StepResult(output=output)
        raise StepError(f"parallel branches failed: {failed or 'none succeeded'}", retryable=False,
                        output=output)

    @classmethod
    def branch_steps(cls, config: ParallelConfig) -> list[str]:
        return [step for branch in config.branches for step in branch]

    @classmethod
    def targets(cls, config: ParallelConfig) -> list[str]:
        return [step for branch in config.branches for step in branch]
