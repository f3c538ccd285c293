"""``remediation``: change the cluster through agent-manager, safely.

Safe by default: dry-run unless both the service and the workflow allow a live change,
only actions on the allowlist, a cap on how much one change may do, and an idempotency
key per execution and step so a retry never applies a change twice.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from steps.base import Step, StepConfig

# The remediation vocabulary. ``patch_deployment`` is the seed's name for raising a
# deployment's memory limit.
ACTIONS = frozenset(
    {"patch_deployment", "increase_memory", "restart_rollout", "delete_pod", "cordon_node",
     "scale"}
)


class RemediationConfig(StepConfig):
    action_type: str = "kubectl"
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool | None = None

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in ACTIONS:
            raise ValueError(f"unknown remediation action {value!r}; known: {', '.join(sorted(ACTIONS))}")
        return value


class Remediation(Step):
    type_name = "remediation"
    Config = RemediationConfig
