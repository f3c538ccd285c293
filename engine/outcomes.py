"""What an execution did to the cluster, in one word, so no message claims a change that
was not made.

=================  =========================================================================
outcome            when
=================  =========================================================================
remediated         a remediation was applied (agent-manager ran it for real)
dry_run            a remediation ran as a dry run only: nothing changed
waiting_approval   a remediation waits for a human's approval
needs_human        a remediation was skipped (the decision named no change) or refused by
                   policy, or the execution was cancelled before anything was applied
failed             the execution failed or timed out before anything was applied
no_action          nothing was attempted (no remediation on the path taken)
=================  =========================================================================

An applied change wins over everything (it happened, whatever failed after it).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from engine.statuses import ExecutionStatus, StepStatus


class Outcome(StrEnum):
    REMEDIATED = "remediated"
    DRY_RUN = "dry_run"
    WAITING_APPROVAL = "waiting_approval"
    NEEDS_HUMAN = "needs_human"
    FAILED = "failed"
    NO_ACTION = "no_action"


def step_outcome(step_type: str, status: str, output: Any) -> Outcome | None:
    """What one step run did, if it is a remediation (None otherwise)."""
    if step_type != "remediation":
        return None
    out = output if isinstance(output, dict) else {}
    if status == StepStatus.SUCCEEDED and out.get("applied"):
        return Outcome.REMEDIATED
    if out.get("waiting_approval"):
        return Outcome.WAITING_APPROVAL
    if status == StepStatus.SUCCEEDED and out.get("dry_run"):
        return Outcome.DRY_RUN
    if status in (StepStatus.SKIPPED, StepStatus.FAILED):
        return Outcome.NEEDS_HUMAN
    return None


_RANK = [Outcome.REMEDIATED, Outcome.WAITING_APPROVAL, Outcome.DRY_RUN, Outcome.NEEDS_HUMAN]


def outcome(status: str, steps: Iterable[tuple[str, str, Any]]) -> Outcome:
    """The outcome of an execution from its status and its step runs (type, status, output)."""
    seen = {o for o in (step_outcome(*s) for s in steps) if o is not None}
    for candidate in _RANK[:3]:
        if candidate in seen:
            return candidate
    if status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT):
        return Outcome.FAILED
    if Outcome.NEEDS_HUMAN in seen or status == ExecutionStatus.CANCELLED:
        return Outcome.NEEDS_HUMAN
    return Outcome.NO_ACTION


def so_far(steps: dict[str, dict[str, Any]]) -> str:
    """A sentence for a notification: what the execution has changed up to now."""
    found = [(sid, step_outcome(r.get("type", ""), r.get("status", ""), r.get("output")), r)
             for sid, r in steps.items()]
    applied = [sid for sid, o, _ in found if o == Outcome.REMEDIATED]
    if applied:
        return "Changed: " + ", ".join(applied) + " applied"
    dry = [sid for sid, o, _ in found if o == Outcome.DRY_RUN]
    if dry:
        return "Nothing was changed: " + ", ".join(dry) + " ran as a dry run"
    waiting = [sid for sid, o, _ in found if o == Outcome.WAITING_APPROVAL]
    if waiting:
        return "Nothing was changed yet: " + ", ".join(waiting) + " waits for approval"
    skipped = [f"{sid} ({(r.get('output') or {}).get('reason') or r.get('error') or r.get('status')})"
               for sid, o, r in found if o == Outcome.NEEDS_HUMAN]
    if skipped:
        return "Nothing was changed: " + "; ".join(skipped) + " - a human should look"
    return "Nothing was changed"
