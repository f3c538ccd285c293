"""The builtin runner's interface on Temporal: start, resume, cancel, drain; and the worker.

:class:`TemporalRunner` is a :class:`~engine.runner.WorkflowRunner` whose executions run on a
Temporal server instead of in this process, so the service (admission, recovery, the API)
uses it unchanged. Starting records the execution and its first step run in our store (so a
reader finds it at once, as with the builtin engine), then starts the Temporal workflow
whose id is the execution id. Starting it again is harmless: a running run is joined
(``USE_EXISTING``), a finished one is not run again. The task :meth:`start` returns ends
with the execution as the workflow returned it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError as TemporalCancelled
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from engine.approvals import Gate
from engine.rules.model import RetryPolicy, Workflow
from engine.runner import Audit, Started, WorkflowRunner
from engine.store import Execution, StepRun, Store
from engine.temporal.activities import StepActivities
from engine.temporal.codec import dump_workflow, execution_from_dict, execution_to_dict, workflow_key
from engine.temporal.workflow import NAME, ExecutionWorkflow
from steps.base import Settings
from steps.http import HttpClient
from steps.mail import Mailer

log = logging.getLogger(__name__)

# Our modules are passed through the workflow sandbox: they are imported once, outside it;
# the workflow only calls their pure parts (definitions, expressions, the parallel join).
PASSTHROUGH = ("engine", "steps", "pydantic", "pydantic_core", "simpleeval", "orjson", "yaml", "httpx")


def sandbox() -> SandboxedWorkflowRunner:
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
    return SandboxedWorkflowRunner(restrictions=restrictions)


class TemporalRunner(WorkflowRunner):
    """Runs executions as Temporal workflow runs; with ``worker=True`` also hosts a worker
    (the workflow and the step activities) on ``task_queue``."""

    def __init__(self, client: Client, store: Store, settings: Settings | None = None, *,
                 task_queue: str = "aetherius", heartbeat_timeout: float = 10.0, worker: bool = True,
                 http: HttpClient | None = None, limiter: Any = None, lock: Any = None,
                 audit: Audit | None = None, outage_retry: RetryPolicy | None = None,
                 approvals: Gate | None = None, mailer: Mailer | None = None,
                 rng: random.Random | None = None, max_concurrent_activities: int = 200,
                 workflow_task_timeout: float | None = None,
                 worker_options: dict[str, Any] | None = None) -> None:
        super().__init__(store, settings, http=http, rng=rng, limiter=limiter, lock=lock, audit=audit,
                         outage_retry=outage_retry, approvals=approvals, mailer=mailer)
        self.client = client
        self.task_queue = task_queue
        self.heartbeat_timeout = heartbeat_timeout
        # How long a workflow task may sit with a worker that died before another takes it.
        self.workflow_task_timeout = workflow_task_timeout
        self.activities = StepActivities(self.store, self.settings, http=http, mailer=mailer,
                                         limiter=limiter, lock=lock, audit=audit, approvals=approvals,
                                         listeners=self.listeners)
        self.worker: Worker | None = None
        if worker:
            self.worker = Worker(client, task_queue=task_queue, workflows=[ExecutionWorkflow],
                                 activities=self.activities.definitions(), workflow_runner=sandbox(),
                                 max_concurrent_activities=max_concurrent_activities,
                                 max_concurrent_local_activities=max_concurrent_activities,
                                 **(worker_options or {}))
        self._worker_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ the worker

    async def __aenter__(self) -> TemporalRunner:
        self.start_worker()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_worker()

    def start_worker(self) -> None:
        if self.worker is not None and self._worker_task is None:
            self._worker_task = asyncio.create_task(self.worker.run(),
                                                    name=f"temporal-worker:{self.task_queue}")
            log.info("Temporal worker polling task queue %s", self.task_queue)

    async def stop_worker(self) -> None:
        if self.worker is not None and self._worker_task is not None:
            await self.worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
            self._worker_task = None

    # ------------------------------------------------------------------ starting

    async def start(self, workflow: Workflow, *, incident: dict[str, Any] | None = None,
                    events: Iterable[dict[str, Any]] = (), context: dict[str, Any] | None = None,
                    execution_id: str | None = None, incident_id: str | None = None,
                    triggered_by: str | None = None) -> Started:
        if execution_id is not None:
            known = await self.store.load_execution(execution_id)
            if known is not None:
                # Started before (by this or another replica): join its run, record nothing.
                return Started(known, self.resume_loaded(known, workflow))
        execution, _first = await self._record_start(
            workflow, incident=incident, events=events, context=context, execution_id=execution_id,
            incident_id=incident_id, triggered_by=triggered_by, engine="temporal")
        handle = await self._start_workflow(execution, workflow)
        return Started(execution, self._track(execution.id, self._result(handle, execution)))

    def resume_loaded(self, execution: Execution, workflow: Workflow) -> asyncio.Task:
        """After a restart or a takeover: join the execution's Temporal run (start it if it
        never started). Temporal, not we, knows where it is: nothing runs twice."""

        async def join() -> Execution:
            if not execution.runs:
                first = StepRun(seq=1, step_id=workflow.steps[0].id, step_type=workflow.steps[0].type)
                await self.store.schedule_runs(execution.id, [first])
            handle = await self._start_workflow(execution, workflow)
            return await self._result(handle, execution)

        return self._track(execution.id, join())

    async def _start_workflow(self, execution: Execution, workflow: Workflow) -> WorkflowHandle:
        definition = dump_workflow(workflow)
        params = {"execution": execution_to_dict(execution, with_runs=False), "workflow": definition,
                  "workflow_key": workflow_key(definition),
                  "options": {"heartbeat_timeout": self.heartbeat_timeout,
                              "outage_retry": self.outage_retry.model_dump(mode="json")
                              if self.outage_retry is not None else None}}
        try:
            return await self.client.start_workflow(
                NAME, params, id=execution.id, task_queue=self.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                task_timeout=None if self.workflow_task_timeout is None
                else timedelta(seconds=self.workflow_task_timeout))
        except WorkflowAlreadyStartedError:
            # It ran to its end already: its result is the execution's.
            return self.client.get_workflow_handle(execution.id)

    async def _result(self, handle: WorkflowHandle, execution: Execution) -> Execution:
        try:
            result = await handle.result()
        except WorkflowFailureError as exc:
            if isinstance(exc.cause, TemporalCancelled):
                raise asyncio.CancelledError(f"execution {execution.id} cancelled") from None
            raise
        return execution_from_dict(result)

    # ------------------------------------------------------------------ cancel, drain

    def cancel(self, execution_id: str) -> bool:
        """Ask Temporal to cancel the run: the workflow records the cancellation and ends."""
        if execution_id not in self._running:
            return False
        asyncio.get_running_loop().create_task(self.cancel_run(execution_id))
        return True

    durable = True      # Temporal keeps the runs alive; a replica only waits for their ends

    async def cancel_anywhere(self, execution_id: str) -> bool:
        """Any replica can cancel any run: Temporal knows the run by the execution's id."""
        return await self.cancel_run(execution_id)

    async def cancel_run(self, execution_id: str) -> bool:
        try:
            await self.client.get_workflow_handle(execution_id).cancel()
        except RPCError as exc:
            log.warning("Cancelling execution %s on Temporal failed: %s", execution_id, exc)
            return False
        return True

    async def drain(self, grace: float) -> list[str]:
        """Stop starting here. The runs go on in Temporal (on other workers, or on this one
        when it is back): only this process's waits for their results are dropped."""
        self.draining = True
        if self.worker is not None and self._worker_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.stop_worker()
        left = [eid for eid, task in self._running.items() if not task.done()]
        for eid in left:
            self._running[eid].cancel()
        if left:
            await asyncio.gather(*(self._running[e] for e in left if e in self._running),
                                 return_exceptions=True)
        return left


async def connect(address: str, namespace: str = "default", *, wait: float = 30.0) -> Client:
    """A client of the server at ``address``; waits up to ``wait`` seconds for it to answer
    (a dev server just started listens before its frontend serves)."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return await Client.connect(address, namespace=namespace)
        except RuntimeError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


__all__ = ["TemporalRunner", "connect", "sandbox"]
