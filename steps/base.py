"""The contract every step type fulfils.

A step type is one class: a name, a pydantic ``Config`` model validated when rules load,
and the ids of steps or expressions its config refers to, so ``aetherius check`` can
vet them before anything runs. The engine looks the type up in the registry
(:mod:`steps`); it never branches on the type name.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class StepConfig(BaseModel):
    """Base of every step's ``config:`` block. Unknown keys are errors, not surprises."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Step:
    """A step type. Subclasses set ``type_name`` and ``Config``."""

    type_name: ClassVar[str]
    Config: ClassVar[type[StepConfig]] = StepConfig

    @classmethod
    def targets(cls, config: StepConfig) -> list[str]:
        """Step ids this config may jump to (besides on_success / on_failure)."""
        return []

    @classmethod
    def expressions(cls, config: StepConfig) -> list[tuple[tuple, str]]:
        """(location inside config, source) of every expression the config holds."""
        return []

    @classmethod
    def is_pause(cls) -> bool:
        """True for steps that let time pass, which makes a loop through them legal."""
        return False
