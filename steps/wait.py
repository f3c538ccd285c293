"""``wait``: let time pass (cancellable); the only step that makes a loop legal."""

from __future__ import annotations

from engine.durations import Duration
from steps.base import Step, StepConfig


class WaitConfig(StepConfig):
    duration: Duration


class Wait(Step):
    type_name = "wait"
    Config = WaitConfig

    @classmethod
    def is_pause(cls) -> bool:
        return True
