"""Recovery and takeover: nothing a replica held is lost when it stops.

At start-up a replica correlates again the events it had recorded but not yet turned into
an incident. Then, every third of ``service.lease``, it sends its heartbeat and takes over
from replicas whose heartbeat is older than the lease: their running executions (resumed
at the step they were in), incidents opened without an execution (the replica died in
between: the workflow starts here), and their pending events. Their queued executions are
taken by the admission loop (:meth:`engine.service.executions.Executions.run`), oldest first,
as slots free up here; a running execution with no step run yet (its replica stopped just as
it left the queue) resumes at its first step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from engine.service.cache import Cache
from engine.service.contracts import ExecutionStore, Records, Workflows
from engine.service.executions import Executions
from engine.service.intake import Intake
from engine.statuses import ExecutionStatus
from engine.storage.outage import Availability, transient

log = logging.getLogger(__name__)


class Recovery:
    def __init__(self, *, records: Records, store: ExecutionStore, workflows: Workflows,
                 executions: Executions, intake: Intake, cache: Cache, lease: float,
                 info: Callable[[], dict[str, Any]], postgres: Availability | None = None) -> None:
        self.records = records
        self.store = store
        self.workflows = workflows
        self.executions = executions
        self.intake = intake
        self.cache = cache
        self.lease = lease
        self.info = info
        self.postgres = postgres or Availability("PostgreSQL")

    @property
    def interval(self) -> float:
        return max(0.5, self.lease / 3)

    async def at_start(self) -> None:
        """Correlate again what this replica held when it stopped."""
        await self.records.heartbeat(self.info())
        rows = await self.records.claim_pending_events(self.lease, own=True)
        await self.intake.recover(rows)
        if rows:
            log.info("Recovered %d event(s) recorded before a stop into correlation", len(rows))

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if transient(exc):
                    self.postgres.failed(exc)     # said once per outage
                else:
                    log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
            else:
                self.postgres.ok()
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        await self.records.heartbeat(self.info())
        await self.resume_orphans()
        await self.start_missing_executions()
        rows = await self.records.claim_pending_events(self.lease, own=False)
        if rows:
            log.info("Taking over %d event(s) of a replica that stopped", len(rows))
            await self.intake.recover(rows)
        await self.cache.ping()

    async def resume_orphans(self) -> None:
        """Running executions no live replica owns (this one's after a restart included)."""
        running = self.executions.running()
        for execution_id in await self.store.claim_orphans(running):
            execution = await self.store.load_execution(execution_id)
            # Checked again here: an execution may have started while we claimed.
            if execution is None or execution.status != ExecutionStatus.RUNNING:
                continue
            if execution_id in self.executions.running():
                continue
            workflow = await self.workflows.workflow(execution.workflow_id, execution.workflow_version)
            if workflow is None:
                log.error("Cannot resume execution %s: workflow %s version %d is gone", execution_id,
                          execution.workflow_id, execution.workflow_version,
                          extra={"execution_id": execution_id})
                continue
            fields = {"execution_id": execution_id}
            if self.executions.runner.durable:
                # Temporal keeps its runs alive (its worker picks them up): nothing is resumed
                # here; this replica only joins the run to close its incident when it ends.
                log.info("Following workflow execution %s on Temporal (workflow %s version %d): its "
                         "replica stopped; Temporal runs it, nothing is resumed here", execution_id,
                         execution.workflow_id, execution.workflow_version, extra=fields)
            else:
                log.info("Resuming workflow execution %s (workflow %s version %d)", execution_id,
                         execution.workflow_id, execution.workflow_version, extra=fields)
            self.executions.resume(execution, workflow)

    async def start_missing_executions(self) -> None:
        """An incident opened by a replica that died before recording its execution would
        stay open for ever: start its workflow here."""
        for row in await self.records.claim_incidents_without_execution(self.lease):
            workflow = await self.workflows.workflow(row["workflow_id"])
            if workflow is None or workflow.status != "active":
                await self.records.close_incident_by_id(row["id"], 0)
                continue
            log.info("Starting the missing execution %s of incident %s", row["execution_id"], row["id"],
                     extra={"incident_id": row["id"], "execution_id": row["execution_id"]})
            await self.executions.start(workflow, incident=row["context"] or {}, events=[],
                                        execution_id=row["execution_id"], incident_id=row["id"])
