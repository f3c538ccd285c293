"""``wait``: let time pass (cancellable); the only step that makes a loop legal."""

from __future__ import annotations

from pydantic import field_validator

from engine.durations import parse_duration
from steps.base import Step, StepConfig


class WaitConfig(StepConfig):
    duration: float

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value)


class Wait(Step):
    type_name = "wait"
    Config = WaitConfig

    @classmethod
    def is_pause(cls) -> bool:
        return True
