"""Executions: the one way the service starts, resumes and cancels workflow executions.

Incidents, recovery and the API all come through here, so every execution is counted the
same way (``aetherius_executions_running``, ``aetherius_executions_total``) and, when it
ends, whoever listens (the incidents part, to close the incident) hears of it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from engine.metrics import Metrics
from engine.rules.model import Workflow
from engine.runner import Started, WorkflowRunner
from engine.service.background import Background
from engine.service.contracts import Stats
from engine.statuses import FINAL_EXECUTION
from engine.store import Execution

log = logging.getLogger(__name__)

Finished = Callable[[Execution], Coroutine[Any, Any, None]]


class Executions:
    def __init__(self, runner: WorkflowRunner, *, metrics: Metrics, stats: Stats,
                 background: Background) -> None:
        self.runner = runner
        self.metrics = metrics
        self.stats = stats
        self.background = background
        # Called with every execution that ended here (not one left running at shutdown).
        self.listeners: list[Finished] = []

    async def start(self, workflow: Workflow, *, incident: dict[str, Any] | None = None,
                    events: Iterable[dict[str, Any]] = (), context: dict[str, Any] | None = None,
                    execution_id: str | None = None, incident_id: str | None = None,
                    triggered_by: str | None = None) -> Started:
        """Record a new execution and run it; returns once it is recorded. ``triggered_by``:
        who started it by hand (they may not approve its changes)."""
        started = await self.runner.start(workflow, incident=incident, events=events, context=context,
                                          execution_id=execution_id, incident_id=incident_id,
                                          triggered_by=triggered_by)
        self.stats.executions += 1
        self._watch(started.task)
        return started

    def resume(self, execution: Execution, workflow: Workflow) -> asyncio.Task[Execution]:
        """Continue an execution loaded from the store (after a restart or a takeover)."""
        task = self.runner.resume_loaded(execution, workflow)
        self._watch(task)
        return task

    def cancel(self, execution_id: str) -> bool:
        return self.runner.cancel(execution_id)

    def running(self) -> list[str]:
        return self.runner.running()

    async def drain(self, grace: float) -> list[str]:
        """Shutdown: running steps get ``grace`` seconds; what still runs is left in the
        store for the next replica to resume."""
        left = await self.runner.drain(grace)
        if left:
            log.info("%d execution(s) left running for the next replica to resume", len(left))
        return left

    def _watch(self, task: asyncio.Task[Execution]) -> None:
        self.metrics.executions_running.inc()
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Execution]) -> None:
        self.metrics.executions_running.dec()
        if task.cancelled():
            return       # shutdown: the execution stays running in the store, to resume
        exc = task.exception()
        if exc is not None:
            log.error("execution %s failed: %s: %s", task.get_name(), type(exc).__name__, exc, exc_info=exc)
            return
        execution = task.result()
        if execution is None or execution.status not in FINAL_EXECUTION:
            return
        self.metrics.executions.labels(execution.workflow_id, execution.status).inc()
        if execution.outcome:
            self.metrics.outcomes.labels(execution.outcome).inc()
        for listener in self.listeners:
            self.background.spawn(listener(execution))
