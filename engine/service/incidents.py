"""Incidents: a burst the correlator formed becomes one recorded incident and one execution.

One open incident per (strategy, key) across replicas: the database decides under a
per-key lock, many incidents per statement (:meth:`Records.open_incidents`). A burst whose
key is open on another replica, or cooling down, attaches its events to that incident
instead of starting a second workflow. When the execution ends, its incident closes and
its cooldown starts, in the same row.
The notifier (:mod:`engine.service.notifier`) hears of both: it pages PagerDuty when an
incident the routes send there opens, and resolves the page when it closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, TypeVar

from engine.correlation import Correlator, Incident
from engine.metrics import Metrics
from engine.service.background import Background
from engine.service.contracts import Records, Stats, Workflows
from engine.service.executions import Executions
from engine.service.notifier import IncidentNotifier
from engine.service.recorded import Recorded
from engine.storage.outage import Availability, retrying
from engine.store import Execution

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

DEFAULT_COOLDOWN = 600.0   # for an incident whose strategy is no longer loaded


class Batched(Generic[T, R]):
    """Calls made while a batch is in flight go together in the next one: ``many`` takes
    the items and returns one result each. If a batch fails, its items are tried one by one
    with ``one``, so each caller gets its own result or its own error (an outage is then
    waited out by the caller, as for any write)."""

    def __init__(self, many: Callable[[list[T]], Awaitable[list[R]]], one: Callable[[T], Awaitable[R]],
                 max_batch: int = 200) -> None:
        self.many, self.one, self.max_batch = many, one, max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="incident-batch")
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)      # the callers of this loop iteration join the first batch
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            try:
                results = await self.many([item for item, _ in batch]) if len(batch) > 1 else None
            except Exception:
                results = None
            if results is None:
                for item, future in batch:
                    try:
                        result = await self.one(item)
                    except Exception as exc:
                        if not future.done():
                            future.set_exception(exc)
                    else:
                        if not future.done():
                            future.set_result(result)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class Incidents:
    def __init__(self, *, records: Records, workflows: Workflows,
                 correlator: Correlator, executions: Executions, metrics: Metrics, stats: Stats,
                 background: Background, recorded: Recorded,
                 postgres: Availability | None = None, notifier: IncidentNotifier | None = None) -> None:
        self.records = records
        self.workflows = workflows
        self.correlator = correlator
        self.executions = executions
        self.metrics = metrics
        self.stats = stats
        self.background = background
        self.recorded = recorded      # which intake batches are in the database
        # A write that meets a PostgreSQL outage waits it out: an incident is never left
        # half-opened or never closed because the database blinked.
        self.postgres = postgres or Availability("PostgreSQL")
        self.notifier = notifier
        # Incidents this replica opened whose execution runs here, by execution id.
        self._by_execution: dict[str, Incident] = {}
        # Opening and closing, many incidents per statement and commit (Records.open_incidents).
        self._open: Batched[tuple[Incident, str | None, list[str]], tuple[str, str | None]] = Batched(
            records.open_incidents, lambda item: records.open_incident(*item))
        self._close: Batched[tuple[str, float | None, float], dict[str, Any] | None] = Batched(
            records.close_incidents, self._close_one)
        correlator.formed.subscribe(on_next=self.formed)
        executions.listeners.append(self.finished)

    def formed(self, incident: Incident) -> None:
        # Events that arrive while it is being opened attach to this id (re-pointed if another
        # replica turns out to hold the incident).
        incident.record_id = incident.id
        # Its burst's events are in the batches prepared so far (the last one maybe being
        # prepared right now): it opens once those are recorded.
        self.background.spawn(self.open(incident, self.recorded.prepared))

    async def open(self, incident: Incident, after: int | None = None) -> None:
        sid = incident.strategy.id
        workflow = await self.workflows.workflow(incident.workflow_id)
        runnable = workflow is not None and workflow.status == "active"
        execution_id = f"exec-{uuid.uuid4().hex[:16]}" if runnable else None
        # PostgreSQL decides, in the statement that would open it, whether the key is open
        # or cooling down (whichever replica did that): no other store is asked first.
        await self.recorded.wait(after)     # the batches holding its events are recorded
        outcome, other = await self._db(partial(self._open, (incident, execution_id,
                                                             list(incident.event_ids))))
        incident.recorded = True
        if outcome != "opened":
            # Cooling down, or open on another replica: its workflow covers these events too.
            assert other is not None
            incident.record_id = other
            # Batches prepared before that point carry this incident's own id: once they are
            # recorded, re-pointing them below catches every one.
            await self.recorded.wait()
            state = "suppressed" if outcome == "cooling" else "attached"
            await self._db(partial(self.records.attach_events, incident.event_ids, other, state))
            await self._db(partial(self.records.repoint_events, incident.id, other))
            count = incident.events + incident.late
            if outcome == "cooling":
                if incident.arm is not None:   # the same key: the same arm as the incident cooling down
                    self.metrics.experiment_suppressed.labels(sid, incident.arm).inc(count)
                await self._db(partial(self.records.add_to_incident, other, suppressed=count))
            else:
                await self._db(partial(self.records.add_to_incident, other, late=count))
            self.correlator.close(incident)
            return
        incident.event_ids = []
        self.metrics.incidents.labels(sid).inc()
        if incident.arm is not None:
            self.metrics.experiment_incidents.labels(sid, incident.arm).inc()
        self.stats.incidents += 1
        if workflow is None or execution_id is None:
            log.error("Incident %s: workflow %s is missing or not active; closing the incident",
                      incident.id, incident.workflow_id, extra={"incident_id": incident.id})
            await self.close(incident)
            return
        self.metrics.publish_to_start.observe(max(0.0, time.time() - incident.first_seen))
        self._by_execution[execution_id] = incident
        if self.notifier is not None:
            self.notifier.opened(incident.context(), execution_id, workflow.id)
        try:
            await self.executions.start(workflow, incident=incident.context(),
                                        events=incident.events_context(), execution_id=execution_id,
                                        incident_id=incident.id)
        except BaseException:
            self._by_execution.pop(execution_id, None)
            raise

    async def finished(self, execution: Execution) -> None:
        """An execution ended: close the incident it was started for, if it is still open."""
        incident = self._by_execution.pop(execution.id, None)
        if incident is not None:
            if incident.arm is not None:
                self._arm_ended(incident.strategy.id, incident.arm, execution,
                                time.time() - (incident.formed_at or incident.first_seen))
            await self.close(incident)
            if self.notifier is not None:
                self.notifier.closed(incident.context(), execution)
            return
        # Resumed after a restart or taken over: the incident is known only by its row.
        row = await self._db(partial(self.records.open_incident_of, execution.id))
        if row is None:
            return      # a manual execution, or the incident was closed already
        if row.get("arm") is not None:
            opened = row.get("opened_at")
            self._arm_ended(row["strategy_id"], row["arm"], execution,
                            None if opened is None else time.time() - opened.timestamp())
        gen = self.workflows.generation
        strategy = gen.strategies.get(row["strategy_id"]) if gen is not None else None
        cooldown = strategy.correlation.cooldown if strategy is not None else DEFAULT_COOLDOWN
        closed = await self._db(partial(self._close, (row["id"], None, cooldown)))
        if closed is not None and self.notifier is not None:
            known = execution.context.get("incident") or {}
            self.notifier.closed({**known, "id": row["id"]}, execution)

    def _arm_ended(self, strategy_id: str, arm: str, execution: Execution,
                   open_seconds: float | None) -> None:
        """The per-arm metrics of an experiment's execution that ended (its incident closes)."""
        if execution.outcome:
            self.metrics.experiment_outcomes.labels(strategy_id, arm, execution.outcome).inc()
        if open_seconds is not None:
            self.metrics.experiment_open_seconds.labels(strategy_id, arm).observe(max(0.0, open_seconds))

    async def close(self, incident: Incident) -> None:
        # Counts are not written here: the intake adds them as events arrive.
        await self._db(partial(self._close, (incident.id, incident.last_seen or None,
                                             incident.strategy.correlation.cooldown)))
        self.correlator.close(incident)

    async def _close_one(self, item: tuple[str, float | None, float]) -> dict[str, Any] | None:
        return (await self.records.close_incidents([item]))[0]

    async def _db(self, action: Callable[[], Awaitable[T]]) -> T:
        return await retrying(self.postgres, action)

    def open_here(self) -> int:
        """Incidents opened here whose execution still runs here."""
        return len(self._by_execution)
