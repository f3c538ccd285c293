"""``wait``: let time pass (cancellable); the only step that makes a loop legal.

The wait counts from the run's first start, so after a crash and a resume it only
waits for the time it had left.
"""

from __future__ import annotations

import asyncio
import time

from engine.durations import Duration
from steps.base import Step, StepConfig, StepContext, StepResult


class WaitConfig(StepConfig):
    duration: Duration


class Wait(Step):
    type_name = "wait"
    Config = WaitConfig

    async def run(self, ctx: StepContext, config: WaitConfig) -> StepResult:
        started = ctx.run.started_at or time.time()
        remaining = max(0.0, started + config.duration - time.time())
        if ctx.settings.virtual_time:
            return StepResult(output={"waited_s": 0.0, "would_wait_s": config.duration, "dry_run": True})
        await asyncio.sleep(remaining)
        return StepResult(output={"waited_s": config.duration, "resumed_with_s": round(remaining, 3)})

    @classmethod
    def is_pause(cls) -> bool:
        return True
