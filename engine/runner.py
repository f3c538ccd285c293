"""The workflow runner: decides which steps run, records every transition, never acts.

Semantics (documented for operators in the README):

- An execution starts at the workflow's first step.
- When a step succeeds, the steps in its ``on_success`` run; when it fails (after its
  retries), those in ``on_failure``. Several ids start those steps concurrently, each
  continuing its own path; a step reached by several paths runs once per arrival (use a
  ``parallel`` step to fan out and join). A decision may jump to a step instead.
- A path ends at a step with no outgoing edge. The execution ends when no step runs.
  It *succeeded* if no step failed; *failed* if one did (its ``on_failure`` steps still
  ran); *timed_out* past the workflow ``timeout``; *cancelled* by ``cancel()``.
- Each attempt has the step's ``timeout``. Failed attempts are retried with exponential
  backoff and jitter (the step's ``retry``, else the workflow's, else one attempt), unless
  the error is not retryable or its kind is listed in ``non_retryable``. On a virtual
  clock (``Settings.virtual_time``: replay, rehearsals) the backoff, like a wait, is not slept.

Every transition goes through the :class:`~engine.store.Store` before the next one
happens, so a crashed execution can be resumed from the store: finished step runs are
never run again, and an unfinished one is run again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.approvals import Gate
from engine.exceptions import ServiceUnavailable, StepError, StepTimeout
from engine.logs import FieldsAdapter
from engine.outcomes import outcome
from engine.rules.model import RetryPolicy, StepSpec, Workflow
from engine.statuses import FINAL_STEP, ExecutionStatus, StepStatus
from engine.store import Execution, MemoryStore, StepRun, Store
from steps import REGISTRY
from steps.base import Settings, Step, StepAudit, StepContext, StepResult
from steps.http import HttpClient
from steps.mail import Mailer

log = logging.getLogger(__name__)

DEFAULT_RETRY = RetryPolicy()

# ``async audit(execution, step id, action, detail)``: puts a step's action on the audit trail.
Audit = Callable[[Execution, str, str, dict[str, Any]], Awaitable[None]]


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Delay before attempt ``attempt + 1`` (attempt counts from 1)."""
    base = min(policy.initial_interval * policy.multiplier ** (attempt - 1), policy.max_interval)
    if policy.jitter:
        base *= rng.uniform(1 - policy.jitter, 1 + policy.jitter)
    return max(0.0, base)


class AttemptHooks:
    """What a step's context offers one run's attempts, on either engine: ``paused()`` stops
    the attempt's timeout while the step waits for what is not its own work (a connection
    slot, a human), and ``waiting(on)`` records that the run waits for a human's approval."""

    def __init__(self, store: Store, execution_id: str, run: StepRun) -> None:
        self.store, self.execution_id, self.run = store, execution_id, run
        self.timer: asyncio.Timeout | None = None      # the current attempt's timeout

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        timer = self.timer
        when = timer.when() if timer is not None else None
        if timer is None or when is None:
            yield
            return
        loop = asyncio.get_running_loop()
        left = when - loop.time()
        timer.reschedule(None)
        try:
            yield
        finally:
            timer.reschedule(loop.time() + max(0.0, left))

    async def waiting(self, on: bool) -> None:
        self.run.status = StepStatus.WAITING_APPROVAL if on else StepStatus.RUNNING
        await self.store.start_attempt(self.execution_id, self.run)


@dataclass(frozen=True)
class Started:
    """A recorded execution and the task that runs it (its result: the ended execution).
    No task: the service recorded it as queued, to start when a slot is free."""

    execution: Execution
    task: asyncio.Task | None

    @property
    def id(self) -> str:
        return self.execution.id

    @property
    def queued(self) -> bool:
        return self.task is None


@dataclass
class _Live:
    """What the runner holds for one running execution."""

    execution: Execution
    workflow: Workflow
    names: dict[str, Any]
    seq: int = 0
    tasks: dict[asyncio.Task, StepRun] = field(default_factory=dict)
    failed_steps: list[str] = field(default_factory=list)
    # Runs whose first attempt was recorded as started with the step before them (seqs).
    started_early: set[int] = field(default_factory=set)


class WorkflowRunner:
    """Runs workflows. One instance serves many concurrent executions."""

    def __init__(self, store: Store | None = None, settings: Settings | None = None, *,
                 http: HttpClient | None = None, registry: dict[str, type[Step]] | None = None,
                 rng: random.Random | None = None, measure_overhead: bool = False,
                 limiter: Any = None, lock: Any = None, audit: Audit | None = None,
                 outage_retry: RetryPolicy | None = None, approvals: Gate | None = None,
                 mailer: Mailer | None = None) -> None:
        self.store: Store = store if store is not None else MemoryStore()
        self.settings = settings or Settings(live=False)
        # Whoever makes the HTTP client closes it; None is enough when nothing calls out.
        self.http = http
        # Sends email notifications (steps.mail); whoever makes it closes it, like the client.
        self.mailer = mailer
        self.steps: dict[str, Step] = {name: cls() for name, cls in (registry or REGISTRY).items()}
        self.rng = rng or random.Random()
        self._running: dict[str, asyncio.Task] = {}
        self.measure_overhead = measure_overhead
        self.overheads: list[float] = []   # seconds of runner work per step run
        # Called as listener(what, execution, run) for "step_started" / "step_finished".
        self.listeners: list[Any] = []
        # Shared remediation guard: ``async limiter(action, target) -> bool`` (rate limits).
        self.limiter = limiter
        # Shared per-key lock: ``lock(name)`` -> async context manager (one remediation per target).
        self.lock = lock
        # The audit trail: ``async audit(execution, step id, action, detail)`` for what a step
        # must put on record (each remediation request sent to agent-manager).
        self.audit = audit
        # Where a step and its workflow set no retry: outside services that are unavailable
        # (ServiceUnavailable, a busy lock) are retried on this policy, so a short outage of
        # agent-manager delays executions instead of failing them. None: one attempt.
        self.outage_retry = outage_retry
        # Where remediations that need a human's approval ask for it and wait (engine.approvals).
        self.approvals = approvals
        # Draining (service shutdown): start no new step; executions stay "running" in the
        # store, to be resumed by this or another replica.
        self.draining = False

    # ----------------------------------------------------------------- public API

    async def run(self, workflow: Workflow, *, incident: dict[str, Any] | None = None,
                  events: Iterable[dict[str, Any]] = (), context: dict[str, Any] | None = None,
                  execution_id: str | None = None, incident_id: str | None = None) -> Execution:
        """Start an execution and wait for it to end."""
        started = await self.start(workflow, incident=incident, events=events, context=context,
                                   execution_id=execution_id, incident_id=incident_id)
        assert started.task is not None
        return await started.task

    async def start(self, workflow: Workflow, *, incident: dict[str, Any] | None = None,
                    events: Iterable[dict[str, Any]] = (), context: dict[str, Any] | None = None,
                    execution_id: str | None = None, incident_id: str | None = None,
                    triggered_by: str | None = None) -> Started:
        """Record a new execution, then run it in the background. Returns once the execution
        and its first step run are in the store, so a reader finds them at once; the task's
        result is the finished :class:`Execution`. ``triggered_by`` names who started it by
        hand (that principal may not approve its changes)."""
        execution, first = await self._record_start(workflow, incident=incident, events=events,
                                                    context=context, execution_id=execution_id,
                                                    incident_id=incident_id, triggered_by=triggered_by)
        live = _Live(execution, workflow, self._names(execution, workflow), seq=1)
        return Started(execution, self._track(execution.id, self._drive(live, [first])))

    async def _record_start(self, workflow: Workflow, *, incident: dict[str, Any] | None,
                            events: Iterable[dict[str, Any]], context: dict[str, Any] | None,
                            execution_id: str | None, incident_id: str | None, triggered_by: str | None,
                            engine: str = "") -> tuple[Execution, StepRun]:
        """Record a new execution with its first step run, and say so (either engine)."""
        execution = self.prepare(workflow, incident=incident, events=events, context=context,
                                 execution_id=execution_id, incident_id=incident_id,
                                 triggered_by=triggered_by)
        first = StepRun(seq=1, step_id=workflow.steps[0].id, step_type=workflow.steps[0].type)
        execution.runs.append(first)
        await self.store.create_execution(execution, first)
        log.info("Workflow execution %s started: workflow=%s version=%d dry_run=%s%s", execution.id,
                 workflow.id, workflow.version, execution.dry_run, f" engine={engine}" if engine else "",
                 extra=_ids(execution))
        return execution, first

    def prepare(self, workflow: Workflow, *, incident: dict[str, Any] | None = None,
                events: Iterable[dict[str, Any]] = (), context: dict[str, Any] | None = None,
                execution_id: str | None = None, incident_id: str | None = None,
                triggered_by: str | None = None) -> Execution:
        """The execution :meth:`start` would record (not recorded: the service may queue it,
        and :meth:`resume_loaded` starts it at its first step once it leaves the queue)."""
        return Execution(
            id=execution_id or f"exec-{uuid.uuid4().hex[:16]}", workflow_id=workflow.id,
            workflow_version=workflow.version, incident_id=incident_id or (incident or {}).get("id"),
            context={"incident": incident or {}, "events": list(events), "vars": context or {},
                     **({"triggered_by": triggered_by} if triggered_by else {})},
            dry_run=self._dry_run(workflow),
        )

    def cancel(self, execution_id: str) -> bool:
        """Cancel a running execution; its running steps are cancelled, the status recorded."""
        task = self._running.get(execution_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def running(self) -> list[str]:
        return list(self._running)

    # The builtin runner keeps its executions alive itself: after a stop they are resumed
    # from the store by a replica (engine.service.recovery). An engine that keeps them
    # alive on its own (Temporal) says True: nothing here may run one of its steps again.
    durable = False

    async def cancel_anywhere(self, execution_id: str) -> bool:
        """Cancel an execution wherever it runs. Here: only one that runs in this process."""
        return self.cancel(execution_id)

    async def resume(self, execution_id: str, workflow: Workflow) -> Execution | None:
        """Continue an execution from the store: unfinished runs run again (same
        idempotency key), finished ones are only read back into the context."""
        execution = await self.store.load_execution(execution_id)
        if execution is None or execution.status != ExecutionStatus.RUNNING:
            return execution
        return await self.resume_loaded(execution, workflow)

    def resume_loaded(self, execution: Execution, workflow: Workflow) -> asyncio.Task:
        """Resume an execution already loaded from the store, in the background."""
        return self._track(execution.id, self._continue(execution, workflow))

    def _track(self, execution_id: str, driver: Coroutine[Any, Any, Execution]) -> asyncio.Task:
        task = asyncio.create_task(driver, name=f"execution:{execution_id}")
        self._running[execution_id] = task
        task.add_done_callback(lambda _t: self._running.pop(execution_id, None))
        return task

    async def drain(self, grace: float) -> list[str]:
        """Let running steps finish (up to ``grace`` seconds) without starting new ones;
        then detach what is still running. Returns the executions left to resume."""
        self.draining = True
        tasks = [t for t in self._running.values() if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        left = [eid for eid, t in self._running.items() if not t.done()]
        for eid in left:
            self._running[eid].cancel()
        if left:
            await asyncio.gather(*(self._running[e] for e in left if e in self._running),
                                 return_exceptions=True)
        return left

    # ----------------------------------------------------------------- driving

    def _dry_run(self, workflow: Workflow) -> bool:
        return self.settings.dry_run or workflow.dry_run is True or not self.settings.live

    def _names(self, execution: Execution, workflow: Workflow) -> dict[str, Any]:
        return initial_names(execution, workflow)

    async def _continue(self, execution: Execution, workflow: Workflow) -> Execution:
        live = _Live(execution, workflow, self._names(execution, workflow),
                     seq=max((r.seq for r in execution.runs), default=0))
        if not execution.runs:
            # Recorded without a step run: it waited in the service's queue (or its replica
            # stopped just as it left the queue). It starts at the first step.
            first = StepRun(seq=1, step_id=workflow.steps[0].id, step_type=workflow.steps[0].type)
            execution.runs.append(first)
            live.seq = 1
            await self.store.schedule_runs(execution.id, [first])
            log.info("Workflow execution %s started: workflow=%s version=%d dry_run=%s",
                     execution.id, workflow.id, workflow.version, execution.dry_run, extra=_ids(execution))
            return await self._drive(live, [first])
        pending = []
        for run in sorted(execution.runs, key=lambda r: r.seq):
            if run.status in FINAL_STEP:
                self._remember(live, run)
            elif run.in_branch_of is None:
                pending.append(run)   # its parallel parent re-runs branch children itself
        log.info("Workflow execution %s resumed: %d step run(s) to finish", execution.id, len(pending),
                 extra=_ids(execution))
        return await self._drive(live, pending)

    async def _drive(self, live: _Live, runs: list[StepRun]) -> Execution:
        execution, workflow = live.execution, live.workflow
        try:
            async with asyncio.timeout(max(0.0, execution.started_at + workflow.timeout - time.time())):
                for run in runs:
                    if not self.draining:
                        self._launch(live, run)
                while live.tasks:
                    done, _ = await asyncio.wait(list(live.tasks), return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        live.tasks.pop(task)
                        for nxt in task.result():
                            if not self.draining:   # recorded as pending: a resume starts it
                                self._launch(live, nxt)
                if self.draining:
                    log.info("Workflow execution %s paused for shutdown; it will be resumed", execution.id,
                             extra=_ids(execution))
                    return execution
            execution.status = ExecutionStatus.FAILED if live.failed_steps else ExecutionStatus.SUCCEEDED
            if live.failed_steps:
                execution.error = f"step(s) failed: {', '.join(live.failed_steps)}"
        except TimeoutError:
            execution.status = ExecutionStatus.TIMED_OUT
            execution.error = f"workflow timeout {workflow.timeout:g}s"
        except asyncio.CancelledError:
            if self.draining:
                # Shutdown past the grace period: the store keeps it running, to resume.
                for task in live.tasks:
                    task.cancel()
                raise
            execution.status, execution.error = ExecutionStatus.CANCELLED, "cancelled"
            await self._stop_tasks(live, StepStatus.CANCELLED)
            await asyncio.shield(self._finish(execution))
            raise
        finally:
            if execution.status == ExecutionStatus.TIMED_OUT:
                await self._stop_tasks(live, StepStatus.TIMED_OUT)
        await asyncio.shield(self._finish(execution))
        return execution

    async def _stop_tasks(self, live: _Live, status: str) -> None:
        for task in live.tasks:
            task.cancel()
        if live.tasks:
            await asyncio.gather(*live.tasks, return_exceptions=True)
        # With the runs recorded as started but not yet launched (see _step).
        early = [r for r in live.execution.runs if r.seq in live.started_early]
        for run in [*live.tasks.values(), *early]:
            if run.status not in FINAL_STEP:
                run.status, run.error, run.finished_at = status, status.replace("_", " "), time.time()
                await asyncio.shield(self.store.finish_step(live.execution.id, run, []))
        live.tasks.clear()
        live.started_early.clear()

    async def _finish(self, execution: Execution) -> None:
        execution.finished_at = time.time()
        execution.outcome = outcome(execution.status,
                                    ((r.step_type, r.status, r.output) for r in execution.runs))
        await self.store.finish_execution(execution)
        log.info("Workflow execution %s finished: status=%s outcome=%s duration=%.3fs%s", execution.id,
                 execution.status, execution.outcome, execution.duration or 0.0,
                 f" error={execution.error}" if execution.error else "",
                 extra=_ids(execution))

    def _launch(self, live: _Live, run: StepRun) -> None:
        task = asyncio.create_task(self._step(live, run), name=f"step:{live.execution.id}:{run.step_id}")
        live.tasks[task] = run

    def _schedule(self, live: _Live, step_ids: list[str], parent: StepRun,
                  in_branch_of: int | None = None) -> list[StepRun]:
        out = []
        for step_id in step_ids:
            spec = live.workflow.step(step_id)
            live.seq += 1
            run = StepRun(seq=live.seq, step_id=step_id, step_type=spec.type, parent=parent.seq,
                          in_branch_of=in_branch_of)
            live.execution.runs.append(run)
            out.append(run)
        return out

    # ----------------------------------------------------------------- one step run

    async def _step(self, live: _Live, run: StepRun) -> list[StepRun]:
        """Run one step run to its end; record it and what it schedules; return those."""
        began = time.perf_counter()
        spec = live.workflow.step(run.step_id)
        result, step_time = await self._attempts(live, spec, run)
        if run.status == StepStatus.FAILED:
            run.branch = list(spec.on_failure)
            # A branch child's failure is judged by its parallel step's join.
            if run.in_branch_of is None:
                live.failed_steps.append(spec.id)
        else:
            run.branch = list(result.next if result is not None and result.next is not None
                              else spec.on_success)
        scheduled = self._schedule(live, run.branch, run) if run.in_branch_of is None else []
        if not self.draining:
            # The next runs start the moment this one is recorded: their first attempt goes
            # in the same commit (one write per step transition instead of two). Should the
            # process die before they start, a resume finds them running, as after any crash
            # between an attempt's record and its work, and runs them again.
            now = time.time()
            for nxt in scheduled:
                nxt.attempts, nxt.status = 1, StepStatus.RUNNING
                nxt.started_at = nxt.attempt_started_at = now
                live.started_early.add(nxt.seq)
        await self.store.finish_step(live.execution.id, run, scheduled)
        self._notify("step_finished", live.execution, run)
        if self.measure_overhead:
            self.overheads.append(time.perf_counter() - began - step_time)
        return scheduled

    async def _attempts(self, live: _Live, spec: StepSpec, run: StepRun) -> tuple[StepResult | None, float]:
        execution, workflow = live.execution, live.workflow
        step = self.steps[spec.type]
        policy = spec.retry or workflow.retry or DEFAULT_RETRY
        outage_only = spec.retry is None and workflow.retry is None and self.outage_retry is not None
        if outage_only:
            policy = self.outage_retry or DEFAULT_RETRY
        logger = FieldsAdapter(log, {**_ids(execution), "step_id": spec.id})
        hooks = AttemptHooks(self.store, execution.id, run)

        ctx = StepContext(execution_id=execution.id, workflow=workflow, step=spec, run=run,
                          names=live.names, settings=self.settings, http=self.http,
                          dry_run=execution.dry_run, log=logger,
                          run_branch=lambda ids: self._branch(live, run, ids), limiter=self.limiter,
                          lock=self.lock, audit=self._audit_for(execution, spec.id), paused=hooks.paused,
                          approvals=self.approvals, waiting=hooks.waiting,
                          deadline=execution.started_at + workflow.timeout,
                          triggered_by=execution.context.get("triggered_by"), mailer=self.mailer)
        step_time = 0.0
        while True:
            if run.seq in live.started_early:   # recorded with the step before it
                live.started_early.discard(run.seq)
            else:
                run.attempts += 1
                now = time.time()
                run.attempt_started_at = now
                if run.started_at is None:
                    run.started_at = now
                run.status = StepStatus.RUNNING
                await self.store.start_attempt(execution.id, run)
            logger.info("Executing %s step %s (attempt %d/%d)", spec.type, spec.id, run.attempts,
                        policy.max_attempts)
            self._notify("step_started", execution, run)
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(spec.timeout) as timer:
                    hooks.timer = timer
                    result = await step.run(ctx, spec.parsed)
            except TimeoutError:
                error: StepError = StepTimeout(f"step timeout {spec.timeout:g}s")
            except StepError as exc:
                error = exc
            except asyncio.CancelledError:
                step_time += time.perf_counter() - t0
                raise
            except Exception as exc:  # a bug in a step must not kill the execution
                logger.exception("step %s raised an unexpected error", spec.id)
                error = StepError(f"{type(exc).__name__}: {exc}", retryable=False)
            else:
                step_time += time.perf_counter() - t0
                skipped = result.status == StepStatus.SKIPPED
                run.status = StepStatus.SKIPPED if skipped else StepStatus.SUCCEEDED
                run.output, run.error, run.error_kind = result.output, None, None
                run.finished_at = time.time()
                self._remember(live, run, result)
                return result, step_time
            step_time += time.perf_counter() - t0
            run.error, run.error_kind = str(error), error.kind
            retry = (error.retryable and error.kind not in policy.non_retryable
                     and run.attempts < policy.max_attempts
                     and (not outage_only or isinstance(error, ServiceUnavailable)))
            if not retry:
                run.status, run.output, run.finished_at = StepStatus.FAILED, error.output, time.time()
                logger.warning("Step %s failed after %d attempt(s): %s: %s", spec.id, run.attempts,
                               error.kind, error)
                self._remember(live, run)
                return None, step_time
            delay = error.next_retry_delay if error.next_retry_delay is not None else backoff_delay(
                policy, run.attempts, self.rng)
            await self.store.fail_attempt(execution.id, run, str(error), error.kind)
            logger.info("Step %s attempt %d failed (%s: %s); retrying in %.2fs", spec.id, run.attempts,
                        error.kind, error, delay)
            # On a virtual clock (replay, rehearsals) the backoff is taken at once, like a wait.
            await asyncio.sleep(0 if self.settings.virtual_time else delay)

    def _audit_for(self, execution: Execution, step_id: str) -> StepAudit | None:
        return step_audit(self.audit, execution, step_id)

    def _notify(self, what: str, execution: Execution, run: StepRun) -> None:
        notify(self.listeners, what, execution, run)

    def _remember(self, live: _Live, run: StepRun, result: StepResult | None = None) -> None:
        """Put a finished run where later steps and expressions read it."""
        remember(live.names, run, result, self.steps)

    async def _branch(self, live: _Live, parent: StepRun, step_ids: list[str]) -> bool:
        """Run a parallel branch: its steps in order, as child runs of ``parent``."""
        done = {r.step_id: r for r in live.execution.runs
                if r.in_branch_of == parent.seq and r.status in FINAL_STEP}
        for step_id in step_ids:
            previous = done.get(step_id)
            if previous is not None:      # resumed: this child already finished
                if previous.status == StepStatus.FAILED:
                    return False
                continue
            existing = next((r for r in live.execution.runs if r.in_branch_of == parent.seq
                             and r.step_id == step_id and r.status not in FINAL_STEP), None)
            if existing is None:
                existing = self._schedule(live, [step_id], parent, in_branch_of=parent.seq)[0]
                await self.store.schedule_runs(live.execution.id, [existing])
            try:
                await self._step(live, existing)
            except asyncio.CancelledError:
                # The join no longer needs this branch: record its run as cancelled.
                if existing.status not in FINAL_STEP:
                    existing.status, existing.error = StepStatus.CANCELLED, "branch cancelled by the join"
                    existing.finished_at = time.time()
                    await asyncio.shield(self.store.finish_step(live.execution.id, existing, []))
                raise
            if existing.status == StepStatus.FAILED:
                return False
        return True


def initial_names(execution: Execution, workflow: Workflow) -> dict[str, Any]:
    """What expressions and templates see when an execution starts (both engines)."""
    ctx = execution.context
    events = ctx.get("events") or []
    return {
        "incident": ctx.get("incident") or {}, "events": events,
        "event": events[0] if events else {}, "context": ctx.get("vars") or {},
        "steps": {}, "analysis": None, "decision": None,
        "workflow": {"id": workflow.id, "name": workflow.name, "version": workflow.version},
        "execution": {"id": execution.id, "dry_run": execution.dry_run},
    }


def remember(names: dict[str, Any], run: StepRun, result: StepResult | None,
             steps: dict[str, Step]) -> None:
    """Put a finished run in ``names``, where later steps and expressions read it (both engines)."""
    names["steps"][run.step_id] = {
        "status": run.status, "output": run.output, "error": run.error,
        "attempts": run.attempts, "type": run.step_type,
    }
    if result is not None:
        names.update(result.context)
    elif run.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED) and run.step_type in steps:
        # Resuming: rebuild what the step had put in the context from its output.
        names.update(steps[run.step_type].context_from_output(run.output))


def step_audit(audit: Audit | None, execution: Execution, step_id: str) -> StepAudit | None:
    """What a step's context calls to put one of its actions on the audit trail (either engine)."""
    if audit is None:
        return None

    async def record(action: str, detail: dict[str, Any]) -> None:
        await audit(execution, step_id, action, detail)

    return record


def notify(listeners: Iterable[Any], what: str, execution: Execution, run: StepRun) -> None:
    """Tell the observers of a step run (either engine); an observer never breaks an execution."""
    for listener in listeners:
        try:
            listener(what, execution, run)
        except Exception:
            log.exception("runner listener failed")


def _ids(execution: Execution) -> dict[str, Any]:
    """The ``extra`` of a line about ``execution`` (rendered by :mod:`engine.logs`)."""
    return {"incident_id": execution.incident_id, "execution_id": execution.id}


def summary(execution: Execution) -> dict[str, Any]:
    """The ``--json`` line of ``aetherius run``: the steps in the order they ran."""
    return {
        "kind": "execution", "id": execution.id, "workflow": execution.workflow_id,
        "version": execution.workflow_version, "status": execution.status, "error": execution.error,
        "dry_run": execution.dry_run, "outcome": execution.outcome,
        "steps": [{"id": r.step_id, "type": r.step_type, "status": r.status, "attempts": r.attempts,
                   **({"error": r.error} if r.error and r.status != StepStatus.SUCCEEDED else {})}
                  for r in sorted(execution.runs, key=lambda r: (r.started_at or float("inf"), r.seq))
                  if r.status != StepStatus.PENDING],
    }
