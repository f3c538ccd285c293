"""Executions: the one way the service starts, resumes and cancels workflow executions.

Incidents, recovery and the API all come through here, so every execution is counted the
same way (``aetherius_executions_running``, ``aetherius_executions_total``) and, when it
ends, whoever listens (the incidents part, to close the incident) hears of it once.

**Admission.** At most ``executions.max_running`` executions run on this replica at once.
An execution that cannot start yet is recorded in PostgreSQL with status ``queued`` (its
context, its pinned workflow version, this replica as owner) and waits there, first in,
first out by admission time; nothing of it is held in memory. When a running execution
ends, :meth:`Executions.run` (the admission loop) takes the oldest queued ones and starts
them at their first step; their workflow timeout counts from that start. The queue is in
the database, so it survives a ``kill -9``: a restarted replica takes its own queued
executions back at once, and another replica takes those of a replica whose heartbeat is
older than ``service.lease``, as recovery does with running executions. Executions resumed
after a restart or a takeover were admitted before: they resume at once, and the queue
waits until fewer than ``max_running`` run. An execution waiting for a human's approval
holds no slot meanwhile. So under overload latency grows, and nothing times out in memory.
Past ``executions.max_queued`` queued here, the NATS intake stops fetching until the queue
drains below it (the events wait in JetStream, as durable as the queue), so memory stays
bounded however long an overload lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from engine.metrics import Metrics
from engine.outcomes import outcome
from engine.rules.model import Workflow
from engine.runner import Started, WorkflowRunner
from engine.service.background import Background
from engine.service.contracts import ExecutionStore, Stats, Workflows
from engine.statuses import FINAL_EXECUTION, ExecutionStatus
from engine.storage.outage import Availability, transient
from engine.store import Execution

log = logging.getLogger(__name__)

Finished = Callable[[Execution], Coroutine[Any, Any, None]]

CLAIM_BATCH = 100       # queued executions taken from the database at once
COALESCE = 0.02         # seconds the admission loop waits for more free slots before a claim


class Executions:
    def __init__(self, runner: WorkflowRunner, *, metrics: Metrics, stats: Stats,
                 background: Background, store: ExecutionStore | None = None,
                 workflows: Workflows | None = None, max_running: int | None = None,
                 max_queued: int | None = None, poll: float = 5.0,
                 postgres: Availability | None = None) -> None:
        self.runner = runner
        self.metrics = metrics
        self.stats = stats
        self.background = background
        # The queue needs the store and the workflows; without them (or without a cap)
        # every execution starts at once.
        self.store = store
        self.workflows = workflows
        self.max_running = max_running if store is not None and workflows is not None else None
        # Past this many queued here, the NATS intake waits (:meth:`room`): events stay in JetStream.
        self.max_queued = max_queued if self.max_running is not None else None
        self.poll = poll            # also look for the queued executions of replicas that stopped
        self.postgres = postgres or Availability("PostgreSQL")
        # Called with every execution that ended here (not one left running at shutdown).
        self.listeners: list[Finished] = []
        self._queued = 0            # this replica's queued executions (recorded or being recorded)
        self._inserting = 0         # of which being recorded
        self._reserved = 0          # slots taken by starts and claims not yet running
        self._claimed: set[str] = set()   # taken from the queue, not yet running (not orphans!)
        self._humans = 0            # running here, but waiting for a human's approval
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._full_since: float | None = None

    # ------------------------------------------------------------------ starting

    async def start(self, workflow: Workflow, *, incident: dict[str, Any] | None = None,
                    events: Iterable[dict[str, Any]] = (), context: dict[str, Any] | None = None,
                    execution_id: str | None = None, incident_id: str | None = None,
                    triggered_by: str | None = None) -> Started:
        """Record a new execution and run it, or queue it if ``max_running`` run already (or
        others wait before it); returns once it is recorded (``Started.queued``: no task yet).
        ``triggered_by``: who started it by hand (they may not approve its changes)."""
        if self.max_running is None or (self._queued == 0 and self.busy() < self.max_running):
            self._reserved += 1
            try:
                started = await self.runner.start(workflow, incident=incident, events=events,
                                                  context=context, execution_id=execution_id,
                                                  incident_id=incident_id, triggered_by=triggered_by)
            finally:
                self._reserved -= 1
            assert started.task is not None
            self.stats.executions += 1
            self._watch(started.task)
            return started
        assert self.store is not None
        execution = self.runner.prepare(workflow, incident=incident, events=events, context=context,
                                        execution_id=execution_id, incident_id=incident_id,
                                        triggered_by=triggered_by)
        execution.status = ExecutionStatus.QUEUED
        execution.queued_at = execution.started_at = time.time()
        self._queued += 1       # from now on, later starts queue behind this one
        self._inserting += 1
        self._gauge()
        try:
            await self.store.queue_execution(execution)
        except BaseException:
            self._queued -= 1
            self._gauge()
            raise
        finally:
            self._inserting -= 1
        log.info("Workflow execution %s queued: workflow=%s version=%d; %d running, %d queued here "
                 "(executions.max_running %d)", execution.id, workflow.id, workflow.version, self.busy(),
                 self._queued, self.max_running,
                 extra={"incident_id": execution.incident_id, "execution_id": execution.id})
        self._wake.set()
        return Started(execution, None)

    def resume(self, execution: Execution, workflow: Workflow) -> asyncio.Task[Execution]:
        """Continue an execution loaded from the store (after a restart or a takeover)."""
        task = self.runner.resume_loaded(execution, workflow)
        self._watch(task)
        return task

    def busy(self) -> int:
        """Executions running here, and slots taken for ones about to; one that waits for a
        human's approval holds no slot (it calls out to no one, and may wait for hours)."""
        return max(0, len(self.runner.running()) - self._humans) + self._reserved

    def waiting_for_humans(self, delta: int) -> None:
        """An execution here began (+1) or ended (-1) a wait for a human's approval."""
        self._humans = max(0, self._humans + delta)
        if delta > 0:
            self._wake.set()        # its slot is free meanwhile

    @property
    def queued(self) -> int:
        """This replica's queued executions, as far as it knows."""
        return self._queued

    # ------------------------------------------------------------------ the admission loop

    async def run(self) -> None:
        """Start queued executions whenever a slot is free: woken when one ends or is queued,
        and every ``poll`` seconds (queued executions of replicas that stopped)."""
        if self.max_running is None:
            return
        self._wake.set()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()
            if self._queued and self.busy() > self.max_running - CLAIM_BATCH:
                # Slots free one at a time as executions end: gather a few before claiming,
                # so the queue costs a query per batch of starts, not two per execution.
                await asyncio.sleep(COALESCE)
            try:
                await self.admit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if transient(exc):
                    self.postgres.failed(exc)     # said once per outage; the queue waits
                else:
                    log.warning("admitting queued executions failed: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1.0)
            else:
                self.postgres.ok()

    async def admit(self) -> int:
        """Start as many of the oldest queued executions as there are free slots; returns how many."""
        if self.max_running is None or self.store is None or self.workflows is None:
            return 0
        started = 0
        while not self.runner.draining:
            free = self.max_running - self.busy()
            if free <= 0:
                break
            asked = min(free, CLAIM_BATCH)
            self._reserved += asked
            claimed: list[tuple[str, bool, float]] = []
            try:
                claimed = await self.store.claim_queued(asked)
                self._claimed.update(execution_id for execution_id, _, _ in claimed)
                loaded = await self.store.load_executions([execution_id for execution_id, _, _ in claimed])
                for execution_id, own, waited in claimed:
                    if own:
                        self._queued = max(0, self._queued - 1)
                    try:
                        if await self._start_claimed(loaded.get(execution_id), waited):
                            started += 1
                    finally:
                        self._claimed.discard(execution_id)
            finally:
                self._reserved -= asked
                # Any left unstarted (an outage midway) are running rows of this replica with no
                # task: recovery resumes them at their first step, as after a restart.
                self._claimed.difference_update(execution_id for execution_id, _, _ in claimed)
                self._gauge()
            if len(claimed) < asked:
                await self.recount()     # the queue is empty, as far as this replica may take
                break
        return started

    async def _start_claimed(self, execution: Execution | None, waited: float) -> bool:
        assert self.store is not None and self.workflows is not None
        if execution is None or execution.status != ExecutionStatus.RUNNING:
            return False
        ids = {"incident_id": execution.incident_id, "execution_id": execution.id}
        workflow = await self.workflows.workflow(execution.workflow_id, execution.workflow_version)
        if workflow is None:
            log.error("Cannot start queued execution %s: workflow %s version %d is gone", execution.id,
                      execution.workflow_id, execution.workflow_version, extra=ids)
            execution.status, execution.error = ExecutionStatus.FAILED, "its workflow version is gone"
            execution.finished_at = time.time()
            execution.outcome = outcome(execution.status, [])
            await self.store.finish_execution(execution)
            self._ended_with(execution)
            return False
        self.metrics.queue_wait.observe(waited)
        log.info("Workflow execution %s leaves the queue after %.1fs", execution.id, waited, extra=ids)
        self.stats.executions += 1
        self.resume(execution, workflow)
        return True

    async def recount(self) -> None:
        """The count from the database, plus what is being recorded (an execution recorded
        just as it counts may be counted twice: the next short claim counts again)."""
        if self.store is not None:
            counted = await self.store.queued_count()
            self._queued = counted + self._inserting
            self._gauge()

    def _gauge(self) -> None:
        self.metrics.executions_queued.set(self._queued)
        if self.max_queued is None or self._queued < self.max_queued:
            self._room.set()
            if self._full_since is not None:
                log.info("The admission queue has room again (%d queued): the intake resumes after %.0fs",
                         self._queued, time.monotonic() - self._full_since)
                self._full_since = None
        elif self._room.is_set():
            self._room.clear()
            self._full_since = time.monotonic()
            log.warning("The admission queue holds %d executions (executions.max_queued): the intake "
                        "takes no more events until it drains; they wait in NATS", self._queued)

    async def room(self) -> None:
        """Wait while the queue is full (past ``max_queued``): the intake calls this before it
        fetches more, so under a long overload events wait in JetStream, not in memory.
        Returns at once when the service stops."""
        while not self._room.is_set() and not self.runner.draining:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._room.wait()

    # ------------------------------------------------------------------ cancelling, draining

    def cancel(self, execution_id: str) -> bool:
        """Cancel an execution running here (see :meth:`cancel_queued` for a queued one)."""
        return self.runner.cancel(execution_id)

    async def cancel_anywhere(self, execution_id: str) -> bool:
        """Cancel a running execution that runs on another replica, where the engine can
        (Temporal: any replica cancels any run by its id). False with the builtin engine."""
        if not self.runner.durable:
            return False
        return await self.runner.cancel_anywhere(execution_id)

    async def cancel_queued(self, execution_id: str) -> bool:
        """Cancel a queued execution, whichever replica queued it: it never starts, its
        incident closes. False if it is not queued (it started, or ended, meanwhile)."""
        if self.store is None:
            return False
        own = await self.store.cancel_queued(execution_id, outcome(ExecutionStatus.CANCELLED, []).value)
        if own is None:
            return False
        if own:
            self._queued = max(0, self._queued - 1)
            self._gauge()
        execution = await self.store.load_execution(execution_id)
        if execution is not None:
            log.info("Workflow execution %s cancelled while queued", execution_id,
                     extra={"incident_id": execution.incident_id, "execution_id": execution_id})
            self._ended_with(execution)
        return True

    def running(self) -> list[str]:
        """Executions running here, and those just taken from the queue to start here (so
        recovery does not take them for orphans)."""
        return [*self.runner.running(), *self._claimed]

    async def drain(self, grace: float) -> list[str]:
        """Shutdown: running steps get ``grace`` seconds; what still runs is left in the
        store for the next replica to resume (and the queue stays queued)."""
        left = await self.runner.drain(grace)
        if left:
            log.info("%d execution(s) left running for the next replica to resume", len(left))
        if self._queued:
            log.info("%d queued execution(s) left in the queue for the next replica", self._queued)
        return left

    # ------------------------------------------------------------------ ends

    def _watch(self, task: asyncio.Task[Execution]) -> None:
        self.metrics.executions_running.inc()
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Execution]) -> None:
        self.metrics.executions_running.dec()
        self._wake.set()            # a slot is free: the next queued one may start
        if task.cancelled():
            return       # shutdown: the execution stays running in the store, to resume
        exc = task.exception()
        if exc is not None:
            log.error("execution %s failed: %s: %s", task.get_name(), type(exc).__name__, exc, exc_info=exc)
            return
        execution = task.result()
        if execution is None or execution.status not in FINAL_EXECUTION:
            return
        self._ended_with(execution)

    def _ended_with(self, execution: Execution) -> None:
        self.metrics.executions.labels(execution.workflow_id, execution.status).inc()
        if execution.outcome:
            self.metrics.outcomes.labels(execution.outcome).inc()
        for listener in self.listeners:
            self.background.spawn(listener(execution))
