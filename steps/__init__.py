"""Step types, registered by name. A new type is one module and one ``register`` call."""

from __future__ import annotations

from steps.ai_analysis import AIAnalysis
from steps.base import Step, StepConfig
from steps.command import Command
from steps.decision import Decision
from steps.notification import Notification
from steps.parallel import Parallel
from steps.remediation import Remediation
from steps.wait import Wait

REGISTRY: dict[str, type[Step]] = {}


def register(step_type: type[Step]) -> type[Step]:
    """Add a step type. A duplicate name raises and leaves the registry untouched."""
    name = step_type.type_name
    if name in REGISTRY:
        raise ValueError(f"step type {name!r} is already registered")
    REGISTRY[name] = step_type
    return step_type


for _type in (Command, AIAnalysis, Decision, Remediation, Notification, Wait, Parallel):
    register(_type)

__all__ = ["REGISTRY", "Step", "StepConfig", "register"]
