"""The Temporal workflow: our workflow definition, interpreted with the builtin runner's meaning.

The run's input carries the execution (id, context, dry-run, start time) and the whole
definition, so a run is pinned to the version it started with. The path is decided here, in
the order :mod:`engine.runner` decides it: ``on_success`` / ``on_failure`` / a decision's
jump, several ids start concurrent paths, the execution ends when no step runs; *failed*
if a step failed, *timed_out* past the workflow ``timeout``, *cancelled* by a Temporal
cancellation.

Where each step type runs:

- ``decision`` and ``parallel`` run here, on their step classes from :mod:`steps`: a decision
  only evaluates sandboxed expressions over the names (pure, no clock, no I/O: deterministic
  on replay), and a parallel step only starts its branches (here, as child step runs) and
  joins them.
- ``wait`` is a durable Temporal timer (``workflow.sleep``) for the time the step has left.
- every other type is one activity (``aetherius.step``) per step run: the step's timeout
  becomes the activity's (enforced by the activity, as the builtin runner does, with the
  ``start_to_close_timeout`` behind it), its retry policy the activity's ``RetryPolicy``. A
  worker that dies is noticed by the heartbeat timeout; the unfinished step then runs again
  (same idempotency key) and finished steps are never repeated, since Temporal replays
  their results from the history.

Each transition is mirrored into our store: it waits in an outbox that the next step
activity writes before its attempt, or that the local activity ``aetherius.record`` writes as
one batch before a ``wait`` and at the execution's end.

A remediation that needs a human hands its pending approval to the workflow, which waits
for an ``approve`` / ``deny`` update (validated: role, plan hash, expiry, approvers) or the
approval's expiry; see :mod:`engine.temporal.approvals`.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from functools import partial
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutType
from temporalio.exceptions import TimeoutError as TemporalTimeout

with workflow.unsafe.imports_passed_through():
    from engine.approvals import problem
    from engine.auth import GRANTS, Permission, Role
    from engine.exceptions import StepError
    from engine.outcomes import outcome
    from engine.rules.model import RetryPolicy, StepSpec
    from engine.runner import DEFAULT_RETRY, initial_names, remember
    from engine.statuses import FINAL_STEP, ExecutionStatus, StepStatus
    from engine.store import StepRun
    from engine.temporal.activities import DECIDE, RECORD, STEP
    from engine.temporal.codec import (
        approval_from_dict,
        execution_from_dict,
        execution_to_dict,
        load_workflow,
        run_to_dict,
    )
    from steps import REGISTRY
    from steps.base import Settings, Step, StepContext, StepResult

NAME = "aetherius.execution"
IN_WORKFLOW = frozenset({"decision", "parallel"})   # pure: they run here, deterministically
TIMER = "wait"
WORKER_LOSSES = 20        # a step re-run this many times after its worker died, at most
RECORD_TIMEOUT = timedelta(seconds=60)
DECIDE_TIMEOUT = timedelta(seconds=30)
RECORD_RETRY = TemporalRetryPolicy(initial_interval=timedelta(milliseconds=100),
                                   maximum_interval=timedelta(seconds=5))


def temporal_retry(policy: RetryPolicy, attempts_left: int) -> TemporalRetryPolicy:
    """Our retry policy as Temporal's (Temporal has no jitter: the backoff is exact)."""
    return TemporalRetryPolicy(
        initial_interval=timedelta(seconds=policy.initial_interval),
        backoff_coefficient=policy.multiplier,
        maximum_interval=timedelta(seconds=max(policy.max_interval, policy.initial_interval)),
        maximum_attempts=max(1, attempts_left),          # 0 would mean "forever" to Temporal
        non_retryable_error_types=list(policy.non_retryable),
    )


@workflow.defn(name=NAME)
class ExecutionWorkflow:
    def __init__(self) -> None:
        self.steps: dict[str, Step] = {name: cls() for name, cls in REGISTRY.items()}
        self.tasks: dict[asyncio.Task, StepRun] = {}
        self.failed_steps: list[str] = []
        self.seq = 0
        self.outbox: list[list[Any]] = []               # mirror writes not sent yet (see _record)
        self.pending: dict[str, dict[str, Any]] = {}    # approvals waiting for an update, by id
        self.decided: set[str] = set()
        self.deciding: set[str] = set()                 # ... whose decision is being recorded

    @workflow.query(name="execution")
    def current(self) -> dict[str, Any]:
        """The execution as this run knows it (Temporal's view; our tables hold the same)."""
        return execution_to_dict(self.execution)

    # ------------------------------------------------------------------ a human's decision

    @workflow.update(name="approve")
    async def approve(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._decide("approve", args)

    @approve.validator
    def _may_approve(self, args: dict[str, Any]) -> None:
        self._check("approve", args)

    @workflow.update(name="deny")
    async def deny(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._decide("deny", args)

    @deny.validator
    def _may_deny(self, args: dict[str, Any]) -> None:
        self._check("deny", args)

    def _check(self, decision: str, args: dict[str, Any]) -> None:
        """The validator: a refused update is not written to the run's history."""
        approval_id = str(args.get("approval_id"))
        pending = self.pending.get(approval_id)
        if pending is None or approval_id in self.decided:
            raise ApplicationError(f"approval {approval_id} is not waiting for a decision in this run "
                                   "(decided, expired, or not asked for yet); nothing changed", type="409")
        who = args.get("who") or {}
        role = who.get("role")
        if role not in {str(r) for r in Role} or Permission.APPROVE not in GRANTS[Role(role)]:
            raise ApplicationError(f"{who.get('name')} has no role that may decide on changes "
                                   f"(role {role or 'none'})", type="403")
        refused = problem(approval_from_dict(pending), "approve" if decision == "approve" else "deny",
                          str(who.get("name")), plan_hash=args.get("plan_hash"), now=self._now())
        if refused is not None:
            raise ApplicationError(refused[1], type=str(refused[0]))

    def _recorded(self, approval_id: str) -> bool:
        return approval_id in self.decided and approval_id not in self.deciding

    async def _decide(self, decision: str, args: dict[str, Any]) -> dict[str, Any]:
        approval_id = str(args["approval_id"])
        pending = self.pending[approval_id]
        self.decided.add(approval_id)       # one decision per run: a second update is refused
        self.deciding.add(approval_id)      # the step goes on once our table has it
        try:
            result: dict[str, Any] = await workflow.execute_activity(
                DECIDE, {**args, "decision": decision, "approval": pending},
                start_to_close_timeout=DECIDE_TIMEOUT, retry_policy=RECORD_RETRY)
        finally:
            self.deciding.discard(approval_id)
        return result

    @workflow.run
    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        self.params = params
        self.execution = execution = execution_from_dict(params["execution"])
        self.definition: dict[str, Any] = params["workflow"]
        self.workflow = definition = load_workflow(self.definition)
        options: dict[str, Any] = params["options"]
        self.heartbeat = float(options["heartbeat_timeout"])
        outage = options.get("outage_retry")
        self.outage_retry = RetryPolicy.model_validate(outage) if outage else None
        self.names = initial_names(execution, definition)
        first = StepRun(seq=1, step_id=definition.steps[0].id, step_type=definition.steps[0].type)
        execution.runs.append(first)
        self.seq = 1
        workflow.logger.info("Workflow execution %s running on Temporal: workflow=%s version=%d",
                             execution.id, definition.id, definition.version)
        try:
            left = max(0.0, execution.started_at + definition.timeout - self._now())
            async with asyncio.timeout(left):
                self._launch(first)
                while self.tasks:
                    done, _ = await asyncio.wait(list(self.tasks), return_when=asyncio.FIRST_COMPLETED)
                    for task in sorted(done, key=lambda t: self.tasks[t].seq):   # deterministic order
                        self.tasks.pop(task)
                        for nxt in task.result():
                            self._launch(nxt)
            execution.status = ExecutionStatus.FAILED if self.failed_steps else ExecutionStatus.SUCCEEDED
            if self.failed_steps:
                execution.error = f"step(s) failed: {', '.join(self.failed_steps)}"
        except TimeoutError:
            execution.status = ExecutionStatus.TIMED_OUT
            execution.error = f"workflow timeout {definition.timeout:g}s"
            await self._stop_tasks(StepStatus.TIMED_OUT)
        except asyncio.CancelledError:
            execution.status, execution.error = ExecutionStatus.CANCELLED, "cancelled"
            await asyncio.shield(self._stop_tasks(StepStatus.CANCELLED))
            await asyncio.shield(self._finish())
            raise
        await self._finish()
        return execution_to_dict(execution)

    # ------------------------------------------------------------------ driving

    def _now(self) -> float:
        return workflow.now().timestamp()

    def _launch(self, run: StepRun) -> None:
        self.tasks[asyncio.create_task(self._step(run))] = run

    def _schedule(self, step_ids: list[str], parent: StepRun,
                  in_branch_of: int | None = None) -> list[StepRun]:
        out = []
        for step_id in step_ids:
            spec = self.workflow.step(step_id)
            self.seq += 1
            run = StepRun(seq=self.seq, step_id=step_id, step_type=spec.type, parent=parent.seq,
                          in_branch_of=in_branch_of)
            self.execution.runs.append(run)
            out.append(run)
        return out

    async def _stop_tasks(self, status: str) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for run in self.tasks.values():
            if run.status not in FINAL_STEP:
                run.status, run.error, run.finished_at = status, status.replace("_", " "), self._now()
                await self._record("finish_step", run=run_to_dict(run), scheduled=[])
        self.tasks.clear()

    async def _finish(self) -> None:
        execution = self.execution
        execution.finished_at = self._now()
        execution.outcome = outcome(execution.status,
                                    ((r.step_type, r.status, r.output) for r in execution.runs))
        await self._record("finish_execution", now=True)

    async def _record(self, op: str, *, now: bool = False, **params: Any) -> None:
        """Mirror one transition. It waits in the outbox for the next step activity, which
        writes it before its own attempt (one round trip less per step), or for the next
        flush: before a wait, and with the execution's end."""
        params["execution"] = execution_to_dict(self.execution, with_runs=False)
        self.outbox.append([op, params])
        if now:
            await self._flush()

    async def _flush(self) -> None:
        if not self.outbox:
            return
        batch, self.outbox = self.outbox, []
        await workflow.execute_local_activity(
            RECORD, args=["batch", {"entries": batch}], start_to_close_timeout=RECORD_TIMEOUT,
            retry_policy=RECORD_RETRY)

    def _take_outbox(self) -> list[list[Any]]:
        batch, self.outbox = self.outbox, []
        return batch

    # ------------------------------------------------------------------ one step run

    async def _step(self, run: StepRun) -> list[StepRun]:
        spec = self.workflow.step(run.step_id)
        if spec.type in IN_WORKFLOW or spec.type == TIMER:
            result = await self._here(spec, run)
        else:
            result = await self._activity(spec, run)
        if run.status == StepStatus.FAILED:
            run.branch = list(spec.on_failure)
            if run.in_branch_of is None:
                self.failed_steps.append(spec.id)
        else:
            chosen = result.next if result is not None and result.next is not None else spec.on_success
            run.branch = list(chosen)
        scheduled = self._schedule(run.branch, run) if run.in_branch_of is None else []
        await self._record("finish_step", run=run_to_dict(run), scheduled=[run_to_dict(r) for r in scheduled])
        return scheduled

    def _failed(self, run: StepRun, message: str, kind: str, output: Any = None) -> None:
        run.status, run.error, run.error_kind, run.output = StepStatus.FAILED, message, kind, output
        run.finished_at = self._now()
        remember(self.names, run, None, self.steps)

    def _succeeded(self, run: StepRun, result: StepResult) -> None:
        run.status = StepStatus.SKIPPED if result.status == StepStatus.SKIPPED else StepStatus.SUCCEEDED
        run.output, run.error, run.error_kind = result.output, None, None
        run.finished_at = self._now()
        remember(self.names, run, result, self.steps)

    async def _here(self, spec: StepSpec, run: StepRun) -> StepResult | None:
        """A decision, a parallel step or a wait: one attempt, in the workflow."""
        run.attempts = 1
        run.started_at = run.attempt_started_at = self._now()
        run.status = StepStatus.RUNNING
        await self._record("start_attempt", run=run_to_dict(run), now=spec.type == TIMER)   # a wait shows
        workflow.logger.info("Executing %s step %s (attempt 1/1)", spec.type, spec.id)
        try:
            async with asyncio.timeout(spec.timeout):
                if spec.type == TIMER:
                    # A durable timer: it survives any worker's crash, so it never needs to
                    # be resumed with the time it had left (the builtin runner's case).
                    duration = float(spec.parsed.duration)       # type: ignore[attr-defined]
                    await workflow.sleep(duration)
                    result = StepResult(output={"waited_s": duration, "resumed_with_s": round(duration, 3)})
                else:
                    ctx = StepContext(
                        execution_id=self.execution.id, workflow=self.workflow, step=spec, run=run,
                        names=self.names, settings=Settings(live=False), http=None,
                        dry_run=self.execution.dry_run, log=workflow.logger,
                        run_branch=lambda ids: self._branch(run, ids))
                    result = await self.steps[spec.type].run(ctx, spec.parsed)
        except TimeoutError:
            self._failed(run, f"step timeout {spec.timeout:g}s", "StepTimeout")
            return None
        except StepError as exc:
            workflow.logger.warning("Step %s failed after 1 attempt(s): %s: %s", spec.id, exc.kind, exc)
            self._failed(run, str(exc), exc.kind, exc.output)
            return None
        self._succeeded(run, result)
        return result

    async def _branch(self, parent: StepRun, step_ids: list[str]) -> bool:
        """A parallel branch: its steps in order, as child runs of ``parent``."""
        for step_id in step_ids:
            (child,) = self._schedule([step_id], parent, in_branch_of=parent.seq)
            await self._record("schedule_runs", runs=[run_to_dict(child)])
            try:
                await self._step(child)
            except asyncio.CancelledError:
                if child.status not in FINAL_STEP:
                    child.status, child.error = StepStatus.CANCELLED, "branch cancelled by the join"
                    child.finished_at = self._now()
                    await asyncio.shield(self._record("finish_step", run=run_to_dict(child), scheduled=[]))
                raise
            if child.status == StepStatus.FAILED:
                return False
        return True

    async def _activity(self, spec: StepSpec, run: StepRun) -> StepResult | None:
        """Any other step: an activity, retried by Temporal on the step's policy."""
        definition = self.workflow
        policy = spec.retry or definition.retry or DEFAULT_RETRY
        outage_only = spec.retry is None and definition.retry is None and self.outage_retry is not None
        if outage_only and self.outage_retry is not None:
            policy = self.outage_retry
        run.started_at = self._now()
        remaining = max(1.0, self.execution.started_at + definition.timeout - self._now())
        # The activity enforces the step's timeout itself (not counting waits for a connection
        # slot or a human, as the builtin runner); Temporal's timeout is the backstop for a
        # worker that hangs. Remediations may wait for an approval: the workflow's time.
        if spec.timeout is not None and spec.type != "remediation":
            start_to_close = min(spec.timeout + 5.0, remaining)
        else:
            start_to_close = remaining
        offset, losses = 0, 0
        while True:
            params = {
                "execution": execution_to_dict(self.execution, with_runs=False),
                "workflow": self.definition, "workflow_key": self.params.get("workflow_key"),
                "step_id": spec.id, "run": run_to_dict(run), "names": self.names,
                "attempt_offset": offset, "max_attempts": policy.max_attempts, "outage_only": outage_only,
                "non_retryable": list(policy.non_retryable), "heartbeat_every": self.heartbeat / 4,
                "mirror": self._take_outbox(),
            }
            try:
                out = await workflow.execute_activity(
                    STEP, params, start_to_close_timeout=timedelta(seconds=start_to_close),
                    heartbeat_timeout=timedelta(seconds=self.heartbeat),
                    retry_policy=temporal_retry(policy, policy.max_attempts - offset),
                    cancellation_type=workflow.ActivityCancellationType.TRY_CANCEL)
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError):
                    details = cause.details[0] if cause.details else {}
                    run.attempts = int(details.get("attempts") or run.attempts or 1)
                    self._failed(run, cause.message, cause.type or "StepError", details.get("output"))
                    return None
                if isinstance(cause, TemporalTimeout) and cause.type == TimeoutType.HEARTBEAT \
                        and losses < WORKER_LOSSES:
                    # Its worker died (kill -9, a lost node): the unfinished step runs again,
                    # with the same idempotency key, even if its retries are used up, as the
                    # builtin runner re-runs an unfinished step when it resumes an execution.
                    losses += 1
                    offset = max(offset + 1, policy.max_attempts)
                    workflow.logger.warning("Step %s lost its worker; running it again (attempt %d)",
                                            spec.id, offset + 1)
                    continue
                if isinstance(cause, TemporalTimeout):
                    run.attempts = max(run.attempts, policy.max_attempts)
                    self._failed(run, f"step timeout {spec.timeout or start_to_close:g}s", "StepTimeout")
                    return None
                self._failed(run, str(cause or err), type(cause or err).__name__)
                return None
            waits = out.get("await_approval")
            if waits is not None:
                # A human decides: wait for the approve/deny update, or the expiry (the step,
                # run again, then finds its approval decided, or expires it by on_timeout).
                approval_id = str(waits["id"])
                self.pending[approval_id] = waits
                left = max(0.0, float(waits["expires_at"]) - self._now()) + 0.5
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(partial(self._recorded, approval_id),
                                                  timeout=timedelta(seconds=left))
                self.pending.pop(approval_id, None)
                continue
            run.attempts = int(out["attempts"])
            run.started_at = out.get("started_at") or run.started_at
            result = StepResult(output=out["output"], status=out["status"], next=out["next"],
                                context=out["context"] or {})
            self._succeeded(run, result)
            return result


__all__ = ["NAME", "ExecutionWorkflow", "temporal_retry"]
