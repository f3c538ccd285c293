"""Every status the orchestrator records, in one place.

They are ``StrEnum``s: each member is the very string stored in PostgreSQL, shown by the
API and matched by the seed's SQL (``status = 'running'``), so comparing with a plain
string still works, and a misspelt member is an AttributeError instead of a silent miss.
"""

from __future__ import annotations

from enum import StrEnum


class StepStatus(StrEnum):
    """One run of a step in an execution."""

    PENDING = "pending"          # scheduled, not started
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"   # running, and waiting for a human's decision
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"          # nothing to do; its path goes on
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class ExecutionStatus(StrEnum):
    """A workflow execution."""

    QUEUED = "queued"            # admitted, waiting for a free slot (executions.max_running)
    RUNNING = "running"
    SUCCEEDED = "succeeded"      # no step failed
    FAILED = "failed"            # a step failed (its on_failure path still ran)
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"      # past the workflow's timeout


class IncidentStatus(StrEnum):
    """An incident, from the first hit of its burst to the end of its cooldown."""

    FORMING = "pending"          # the burst is still arriving (correlation); not recorded yet
    OPEN = "open"                # formed: its workflow runs; later hits attach as late
    CLOSED = "closed"            # its workflow ended; hits during the cooldown are suppressed


class EventState(StrEnum):
    """Where a recorded event went (``events.state``)."""

    RECEIVED = "received"        # recorded, not yet processed
    PENDING = "pending"          # a hit whose burst has not formed an incident yet
    UNMATCHED = "unmatched"      # no strategy matched
    DUPLICATE = "duplicate"      # a repeat of an occurrence already counted
    INHIBITED = "inhibited"      # a consequence covered by another incident (e.g. its node is down)
    ATTACHED = "attached"        # part of an incident (its burst, or late)
    SUPPRESSED = "suppressed"    # arrived while its incident was cooling down


FINAL_STEP = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED,
                        StepStatus.TIMED_OUT})
FINAL_EXECUTION = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED,
                             ExecutionStatus.TIMED_OUT})
