"""Where executions are remembered: the runner's only way to record state.

The runner decides, the steps act, the store remembers. Every state change of an
execution goes through :class:`Store`, in an order that lets a crashed execution resume:

1. ``create_execution``  the execution, its pinned workflow version, its first step run
2. ``start_attempt``     a step run's attempt N begins (with its start time, for waits)
3. ``fail_attempt``      attempt N failed and will be retried after a delay
4. ``finish_step``       the run ended (status, output, error, the branch taken) and the
                         runs it schedules next, in one write
5. ``finish_execution``  the final status

(``schedule_runs`` records the steps of a parallel branch before they start.)

A run that was scheduled but never finished is what a resume re-runs (with the same
idempotency key); finished runs are never re-run. :class:`MemoryStore` serves tests,
``replay`` and ``run``; PostgreSQL implements the same interface for the service.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.statuses import FINAL_EXECUTION, FINAL_STEP, ExecutionStatus, StepStatus

__all__ = ["FINAL_EXECUTION", "FINAL_STEP", "Execution", "MemoryStore", "StepRun", "Store"]


@dataclass
class StepRun:
    """One visit of a step in an execution. ``seq`` orders runs and keys idempotency."""

    seq: int
    step_id: str
    step_type: str
    parent: int | None = None          # the run that scheduled this one
    status: str = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: str | None = None
    error_kind: str | None = None
    branch: list[str] = field(default_factory=list)  # step ids it scheduled next
    started_at: float | None = None    # first attempt's start (a wait resumes from it)
    attempt_started_at: float | None = None
    finished_at: float | None = None
    in_branch_of: int | None = None    # the parallel run this runs inside, if any


@dataclass
class Execution:
    id: str
    workflow_id: str
    workflow_version: int
    status: str = ExecutionStatus.RUNNING
    incident_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)   # incident, events, trigger
    dry_run: bool = True
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    error: str | None = None
    runs: list[StepRun] = field(default_factory=list)
    outcome: str | None = None          # engine.outcomes.Outcome, once it ended
    queued_at: float | None = None      # when it was admitted (it may have waited, status queued)

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


class Store(Protocol):
    async def create_execution(self, execution: Execution, first: StepRun) -> None: ...

    async def schedule_runs(self, execution_id: str, runs: list[StepRun]) -> None: ...

    async def start_attempt(self, execution_id: str, run: StepRun) -> None: ...

    async def fail_attempt(self, execution_id: str, run: StepRun, error: str, kind: str) -> None: ...

    async def finish_step(self, execution_id: str, run: StepRun, scheduled: list[StepRun]) -> None: ...

    async def finish_execution(self, execution: Execution) -> None: ...

    async def load_execution(self, execution_id: str) -> Execution | None: ...

    async def unfinished_executions(self) -> list[str]: ...


class MemoryStore:
    """The store in a dict. Keeps copies, so what it returns is what was written.

    Copies are shallow: the runner replaces a run's fields (status, output, branch) rather
    than mutating what they point to, and outputs are not changed once recorded.
    """

    def __init__(self) -> None:
        self.executions: dict[str, Execution] = {}
        self.log: list[tuple[str, str, Any]] = []   # (operation, execution id, detail)

    async def create_execution(self, execution: Execution, first: StepRun) -> None:
        saved = copy.copy(execution)
        saved.runs = [copy.copy(first)]
        self.executions[execution.id] = saved
        self.log.append(("create_execution", execution.id, first.step_id))

    def _run(self, execution_id: str, seq: int) -> StepRun:
        for run in self.executions[execution_id].runs:
            if run.seq == seq:
                return run
        raise KeyError(seq)

    async def schedule_runs(self, execution_id: str, runs: list[StepRun]) -> None:
        self.executions[execution_id].runs.extend(copy.copy(r) for r in runs)
        self.log.append(("schedule_runs", execution_id, [r.step_id for r in runs]))

    async def start_attempt(self, execution_id: str, run: StepRun) -> None:
        saved = self._run(execution_id, run.seq)
        saved.status, saved.attempts = run.status, run.attempts
        saved.started_at, saved.attempt_started_at = run.started_at, run.attempt_started_at
        self.log.append(("start_attempt", execution_id, (run.step_id, run.attempts)))

    async def fail_attempt(self, execution_id: str, run: StepRun, error: str, kind: str) -> None:
        saved = self._run(execution_id, run.seq)
        saved.error, saved.error_kind = error, kind
        self.log.append(("fail_attempt", execution_id, (run.step_id, run.attempts, kind)))

    async def finish_step(self, execution_id: str, run: StepRun, scheduled: list[StepRun]) -> None:
        execution = self.executions[execution_id]
        index = next(i for i, r in enumerate(execution.runs) if r.seq == run.seq)
        execution.runs[index] = copy.copy(run)
        execution.runs.extend(copy.copy(r) for r in scheduled)
        self.log.append(("finish_step", execution_id, (run.step_id, run.status, run.branch)))

    async def finish_execution(self, execution: Execution) -> None:
        saved = self.executions[execution.id]
        saved.status, saved.error, saved.outcome = execution.status, execution.error, execution.outcome
        saved.finished_at = execution.finished_at
        self.log.append(("finish_execution", execution.id, execution.status))

    async def load_execution(self, execution_id: str) -> Execution | None:
        saved = self.executions.get(execution_id)
        if saved is None:
            return None
        loaded = copy.copy(saved)
        loaded.runs = [copy.copy(r) for r in saved.runs]
        return loaded

    async def load_executions(self, execution_ids: list[str]) -> dict[str, Execution]:
        out = {}
        for execution_id in execution_ids:
            loaded = await self.load_execution(execution_id)
            if loaded is not None:
                out[execution_id] = loaded
        return out

    async def unfinished_executions(self) -> list[str]:
        return [e.id for e in self.executions.values() if e.status not in FINAL_EXECUTION]
