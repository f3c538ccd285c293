"""The activities: every step that does I/O runs here, on the builtin engine's step code.

One activity type, ``aetherius.step``, runs one attempt of one step run: it builds the
:class:`~steps.base.StepContext` the builtin runner would, calls the step class from the
registry, and translates the outcome for Temporal: a result, or an
:class:`~temporalio.exceptions.ApplicationError` typed with the error's kind (so the retry
policy's ``non_retryable`` kinds map onto ``non_retryable_error_types``) and marked
non-retryable where the builtin runner would not retry.

``aetherius.record`` is the mirror: the transitions the workflow decides reach it in
batches (the next step activity applies the workflow's outbox first; a local activity
flushes it before a wait and at the end), and it writes each through the same
:class:`~engine.store.Store` interface the builtin runner uses, so our tables, the API and
the console show executions on either engine alike. Attempts are mirrored by the step
activity itself, as they begin and fail. ``aetherius.decide`` records an accepted approve /
deny update in our approvals table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from engine.approvals import Gate
from engine.auth import Principal, Role
from engine.exceptions import ServiceUnavailable, StepError, StepTimeout
from engine.logs import FieldsAdapter
from engine.runner import AttemptHooks, Audit, notify, step_audit
from engine.statuses import StepStatus
from engine.store import Execution, StepRun, Store
from engine.temporal.approvals import ActivityGate, AwaitDecision
from engine.temporal.codec import (
    approval_from_dict,
    approval_to_dict,
    cached_workflow,
    execution_from_dict,
    run_from_dict,
)
from steps import REGISTRY
from steps.base import Settings, Step, StepAudit, StepContext
from steps.http import HttpClient
from steps.mail import Mailer

log = logging.getLogger("engine.runner")    # the builtin runner's words, in the same logger

STEP = "aetherius.step"
RECORD = "aetherius.record"
DECIDE = "aetherius.decide"

Listener = Callable[[str, Execution, StepRun], None]


class StepActivities:
    """The activities of one worker, holding what steps use (the builtin runner's parts)."""

    def __init__(self, store: Store, settings: Settings, *, http: HttpClient | None = None,
                 mailer: Mailer | None = None, limiter: Any = None, lock: Any = None,
                 audit: Audit | None = None, approvals: Gate | None = None,
                 registry: dict[str, type[Step]] | None = None,
                 listeners: list[Listener] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.http = http
        self.mailer = mailer
        self.limiter = limiter
        self.lock = lock
        self.audit = audit
        self.approvals = approvals
        self.steps: dict[str, Step] = {name: cls() for name, cls in (registry or REGISTRY).items()}
        # The runner's listeners: ("step_started" | "step_finished", execution, run).
        self.listeners: list[Listener] = listeners if listeners is not None else []

    def definitions(self) -> list[Callable[..., Any]]:
        return [self.step, self.record, self.decide]

    # ------------------------------------------------------------------ one step attempt

    @activity.defn(name=STEP)
    async def step(self, params: dict[str, Any]) -> dict[str, Any]:
        info = activity.info()
        for op, entry in params.get("mirror") or ():      # the workflow's transitions since the last step
            await self.record(op, entry)
        execution = execution_from_dict(params["execution"])
        workflow = cached_workflow(params["workflow"], params.get("workflow_key"))
        spec = workflow.step(params["step_id"])
        run = run_from_dict(params["run"])
        run.attempts = params["attempt_offset"] + info.attempt
        run.attempt_started_at = time.time()
        run.started_at = run.started_at or run.attempt_started_at
        run.status = StepStatus.RUNNING
        max_attempts: int = params["max_attempts"]
        outage_only: bool = params["outage_only"]
        non_retryable: list[str] = params["non_retryable"]
        await self.store.start_attempt(execution.id, run)
        logger = FieldsAdapter(log, {"incident_id": execution.incident_id, "execution_id": execution.id,
                                     "step_id": spec.id})
        logger.info("Executing %s step %s (attempt %d/%d)", spec.type, spec.id, run.attempts, max_attempts)
        self._notify("step_started", execution, run)

        hooks = AttemptHooks(self.store, execution.id, run)

        ctx = StepContext(
            execution_id=execution.id, workflow=workflow, step=spec, run=run, names=params["names"],
            settings=self.settings, http=self.http, dry_run=execution.dry_run, log=logger, run_branch=None,
            limiter=self.limiter, lock=self.lock, audit=self._audit_for(execution, spec.id),
            paused=hooks.paused,
            approvals=ActivityGate(self.approvals, time.time) if self.approvals is not None else None,
            waiting=hooks.waiting, deadline=execution.started_at + workflow.timeout,
            triggered_by=execution.context.get("triggered_by"), mailer=self.mailer)
        beat = asyncio.create_task(self._heartbeat(params["heartbeat_every"]))
        try:
            try:
                async with asyncio.timeout(spec.timeout) as timer:
                    hooks.timer = timer
                    result = await self.steps[spec.type].run(ctx, spec.parsed)
            except TimeoutError:
                error: StepError = StepTimeout(f"step timeout {spec.timeout:g}s")
            except StepError as exc:
                error = exc
            except AwaitDecision as waits:
                # A human decides: the workflow waits for the approve/deny update, then runs
                # the step again, which finds its approval decided.
                logger.info("Step %s waits for approval %s (a Temporal update)", spec.id, waits.approval.id)
                return {"await_approval": approval_to_dict(waits.approval), "attempts": run.attempts}
            except asyncio.CancelledError:
                logger.info("Step %s cancelled (attempt %d)", spec.id, run.attempts)
                raise
            except Exception as exc:  # a bug in a step must not kill the execution
                logger.exception("step %s raised an unexpected error", spec.id)
                error = StepError(f"{type(exc).__name__}: {exc}", retryable=False)
            else:
                skipped = result.status == StepStatus.SKIPPED
                return {"status": StepStatus.SKIPPED if skipped else StepStatus.SUCCEEDED,
                        "output": result.output, "next": result.next, "context": result.context,
                        "attempts": run.attempts, "started_at": run.started_at, "finished_at": time.time()}
        finally:
            beat.cancel()
        retry = (error.retryable and error.kind not in non_retryable and run.attempts < max_attempts
                 and (not outage_only or isinstance(error, ServiceUnavailable)))
        if retry:
            await self.store.fail_attempt(execution.id, run, str(error), error.kind)
            logger.info("Step %s attempt %d failed (%s: %s); Temporal retries it", spec.id, run.attempts,
                        error.kind, error)
        else:
            logger.warning("Step %s failed after %d attempt(s): %s: %s", spec.id, run.attempts,
                           error.kind, error)
        raise ApplicationError(str(error), {"output": error.output, "attempts": run.attempts,
                                            "started_at": run.started_at},
                               type=error.kind, non_retryable=not retry,
                               # A step's failure is an outcome, said by our own line above: not
                               # the SDK's warning with a traceback.
                               category=ApplicationErrorCategory.BENIGN,
                               next_retry_delay=_delay(error.next_retry_delay) if retry else None)

    @staticmethod
    async def _heartbeat(every: float) -> None:
        # Tells Temporal this worker is alive (a killed worker's step is run again elsewhere
        # after heartbeat_timeout), and is how a cancellation reaches the step.
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    def _audit_for(self, execution: Execution, step_id: str) -> StepAudit | None:
        return step_audit(self.audit, execution, step_id)

    def _notify(self, what: str, execution: Execution, run: StepRun) -> None:
        notify(self.listeners, what, execution, run)

    # ------------------------------------------------------------------ a human's decision

    @activity.defn(name=DECIDE)
    async def decide(self, params: dict[str, Any]) -> dict[str, Any]:
        """An accepted approve/deny update, recorded in our approvals table (the first
        decision wins there: None if another came first, or the approval expired)."""
        if self.approvals is None or not hasattr(self.approvals, "decide"):
            raise ApplicationError("this worker has no approvals table", non_retryable=True)
        who = params["who"]
        principal = Principal(who["kind"], who["name"], Role(who["role"]) if who.get("role") else None,
                              who.get("client"))
        decided = await self.approvals.decide(approval_from_dict(params["approval"]), params["decision"],
                                              principal, params["channel"], params.get("comment"))
        return {"approval": approval_to_dict(decided) if decided is not None else None}

    # ------------------------------------------------------------------ the mirror

    @activity.defn(name=RECORD)
    async def record(self, op: str, params: dict[str, Any]) -> None:
        """One transition the workflow decided, written through the store (idempotent)."""
        if op == "batch":
            for one, entry in params["entries"]:
                await self.record(one, entry)
            return
        execution = execution_from_dict(params["execution"])
        store = self.store
        if op == "start_attempt":
            await store.start_attempt(execution.id, run_from_dict(params["run"]))
        elif op == "schedule_runs":
            await store.schedule_runs(execution.id, [run_from_dict(r) for r in params["runs"]])
        elif op == "finish_step":
            run = run_from_dict(params["run"])
            await store.finish_step(execution.id, run, [run_from_dict(r) for r in params["scheduled"]])
            self._notify("step_finished", execution, run)
        elif op == "finish_execution":
            await store.finish_execution(execution)
            log.info("Workflow execution %s finished: status=%s outcome=%s duration=%.3fs%s", execution.id,
                     execution.status, execution.outcome, execution.duration or 0.0,
                     f" error={execution.error}" if execution.error else "",
                     extra={"incident_id": execution.incident_id, "execution_id": execution.id})
        else:
            raise ApplicationError(f"unknown record operation {op!r}", non_retryable=True)


def _delay(seconds: float | None) -> Any:
    if seconds is None:
        return None
    from datetime import timedelta

    return timedelta(seconds=seconds)
